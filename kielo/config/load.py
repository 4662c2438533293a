"""Build a validated :class:`Config` from YAML files, dicts and dotted CLI overrides.

Unknown keys and wrong types are errors that name the key, with a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from kielo.config.schema import SECTIONS, Config
from kielo.errors import KieloError
from kielo.resources import locate

CONFIG_FILE = "kielo_config.yaml"


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(sorted(known))}"


def all_keys() -> list[str]:
    """Every dotted key of the schema (``lora.r``, ``output_dir``, ...)."""
    keys = []
    for f in fields(Config):
        if f.name in SECTIONS:
            keys += [f"{f.name}.{g.name}" for g in fields(SECTIONS[f.name])]
        else:
            keys.append(f.name)
    return keys


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` to the field's type; strings from the command line are parsed as YAML scalars."""
    # Annotations are strings here (`from __future__ import annotations`), so types are read from them.
    ann = str(annotation)
    if isinstance(value, str) and ann not in ("str", "str | None", "Any"):
        value = yaml.safe_load(value) if value.strip() else None
    optional = "None" in ann
    if value is None:
        if optional:
            return None
        raise KieloError(f"{key} needs a value", f"set {key} or remove the line to use the default")
    base = ann.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base == "str":
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        raise KieloError(f"{key} = {value!r} is not a {base}", f"give {key} a {base} value") from None
    return value


def _build_section(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise KieloError(f"`{prefix}` must be a mapping of keys", f"write `{prefix}:` followed by indented keys")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise KieloError(f"unknown key `{prefix}.{key}`", _suggest(f"{prefix}.{key}", [f"{prefix}.{k}" for k in known]))
        kwargs[key] = _coerce(value, known[key].type, f"{prefix}.{key}")
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Validate a nested dict (as read from YAML) into a Config."""
    data = dict(data or {})
    top = {f.name: f for f in fields(Config)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top:
            raise KieloError(f"unknown key `{key}`", _suggest(key, list(top) + all_keys()))
        if key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value or {}, key)
        else:
            kwargs[key] = _coerce(value, top[key].type, key)
    return Config(**kwargs)


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (what is written beside every output)."""
    return asdict(config)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    p = locate(path)
    if not p.is_file():
        raise KieloError(f"config file {p} does not exist", "check the path, e.g. configs/demo.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise KieloError(f"{p} is not valid YAML: {e}", "fix the YAML syntax at the line shown") from None
    except UnicodeDecodeError as e:
        raise KieloError(f"{p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})", "save it as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KieloError(f"{p} must hold a mapping of config keys", "see the README's config reference")
    return data


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b`` in a nested dict, validating the key against the schema."""
    if key == "model":
        key = "model.name"  # `--model X` is short for `--model.name X`
    keys = all_keys()
    if key not in keys:
        raise KieloError(f"unknown option `--{key}`", _suggest(key, keys))
    if "." in key:
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][name] = value
    else:
        data[key] = value


def given_keys(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> frozenset[str]:
    """The dotted keys the user set, in the YAML file or as flags (``generation.stop``, ``model.name``):
    commands that take settings from a saved run let exactly these win over the run's."""
    keys = set()
    for key, value in (read_yaml(path) if path else {}).items():
        if key in SECTIONS and isinstance(value, dict):
            keys |= {f"{key}.{name}" for name in value}
        else:
            keys.add(key)
    keys |= {"model.name" if key == "model" else key for key in overrides or {}}
    return frozenset(keys)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: dict | None = None) -> Config:
    """The one way to get a config: defaults < ``base`` < YAML file < dotted overrides."""
    data: dict = {}
    for layer in (base or {}, read_yaml(path) if path else {}):
        for key, value in layer.items():
            if key in SECTIONS and isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(data)


def save_config(config: Config, directory: str | Path) -> Path:
    """Write the resolved config as ``kielo_config.yaml`` into ``directory``."""
    path = Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
