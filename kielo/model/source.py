"""Resolve what a user names as ``--model`` (or ``--adapter``) to something loadable.

Accepted: the alias ``gemma-3-270m``, a local HF folder, a ``.gguf`` file (converted once to an HF folder
in the cache), a kielo training output folder or one of its checkpoints (base from its saved config,
adapter from the folder), or a hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kielo.config.load import CONFIG_FILE
from kielo.errors import KieloError
from kielo.model import default
from kielo.runs.saved import has_adapter, read_run_config

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelSource:
    """A base model location plus, for run folders, the adapter and the run's saved config."""

    path: str  # local HF folder or hub id
    adapter: str | None = None
    run_config: dict | None = None  # the saved kielo_config.yaml of a run folder

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_files(folder: Path) -> None:
    """Fail with the file's name when an adapter's config or weights are missing or damaged.

    Reading the safetensors header is cheap (no tensors are loaded) and catches truncated and garbage files
    before a base model is loaded for minutes only to fail on them.
    """
    from safetensors import SafetensorError, safe_open

    fix = "re-train, or point to another checkpoint (checkpoints/step-N) of the run"
    cfg_file = folder / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KieloError(f"{cfg_file} is damaged (not JSON: {str(e)[:120]})", fix) from None
    if not isinstance(cfg, dict):
        raise KieloError(f"{cfg_file} is damaged (not a JSON object)", fix)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise KieloError(f"{folder} has adapter_config.json but no {ADAPTER_WEIGHTS}", fix)
    try:
        with safe_open(str(weights), framework="pt") as fh:
            if not list(fh.keys()):
                raise KieloError(f"{weights} holds no tensors", fix)
    except SafetensorError as e:
        raise KieloError(f"{weights} is damaged, truncated or not a safetensors file ({e})", fix) from None


def _gguf_to_folder(path: Path) -> str:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = default.cache_root() / "models" / f"{path.stem}-{key}"
    if not (target / "config.json").is_file():
        import shutil
        import tempfile

        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=target.parent))
        try:
            default.convert_gguf_to_hf(path, work / "hf")
            try:
                os.rename(work / "hf", target)
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(target)


def resolve_model(name: str) -> ModelSource:
    """Turn ``model.name`` into a :class:`ModelSource`, failing early on paths that don't exist."""
    if name == default.ALIAS:
        return ModelSource(str(default.ensure_default_model()))
    p = Path(name).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise KieloError(f"GGUF file {p} does not exist", "check the path to the .gguf file")
        return ModelSource(_gguf_to_folder(p))
    if p.is_dir():
        if has_adapter(p):
            run_cfg = read_run_config(p)
            if run_cfg is None:
                raise KieloError(
                    f"{p} holds a LoRA adapter but no {CONFIG_FILE} saying which base it belongs to",
                    "pass the base with --model and the folder with --adapter",
                )
            check_adapter_files(p)
            base = resolve_model(run_cfg.get("model", {}).get("name", default.ALIAS))
            return ModelSource(base.path, adapter=str(p), run_config=run_cfg)
        if (p / "config.json").is_file():
            return ModelSource(str(p))
        if (p / CONFIG_FILE).is_file():
            raise KieloError(
                f"{p} is a kielo run folder without a finished adapter",
                f"point to one of its checkpoints ({p}/checkpoints/step-N) or resume the run with --resume",
            )
        raise KieloError(f"{p} is a folder but not a model (no config.json)", "point to an HF model folder")
    if p.exists():
        raise KieloError(f"{p} is not a model folder or .gguf file", "pass a folder with config.json or a .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise KieloError(f"model path {p} does not exist", "check the path, or use a hub id (org/name)")
    if not HUB_ID.match(name):
        raise KieloError(
            f"model `{name}` is neither an existing path nor a hub id (org/name)",
            f"check the path, or use a hub id like LumiOpen/Llama-Poro-2-8B-base, or `{default.ALIAS}`",
        )
    return _hub_source(name)


def _hub_source(name: str) -> ModelSource:
    """A hub id that is in the local cache or can be reached; asked once, so no download's retries run first."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return ModelSource(name)
    fix = (
        "without a network, pass a local model folder (--model path/to/folder, e.g. one saved with "
        f"`hf download {name} --local-dir DIR` where there is a network) or the embedded default --model {default.ALIAS}"
    )
    if constants.HF_HUB_OFFLINE:
        raise KieloError(f"model `{name}` is not in the local hub cache and the hub is off (HF_HUB_OFFLINE)", fix)
    try:
        model_info(name, timeout=2)
    except GatedRepoError:
        pass  # reachable but gated: loading says how to log in
    except RepositoryNotFoundError:
        raise KieloError(
            f"model `{name}` is not on the hub (or is private)", "check the hub id, or pass a local model folder"
        ) from None
    except HfHubHTTPError:
        pass  # the hub answered; loading reports what it refuses
    except Exception as e:  # noqa: BLE001 - connection errors come from several libraries (httpx, requests, ssl)
        raise KieloError(f"model `{name}` is not in the local hub cache and the hub can't be reached ({e})", fix) from None
    return ModelSource(name)


def resolve_adapter(path: str) -> tuple[str, dict | None]:
    """An adapter folder (plain PEFT, checkpoint or run folder) and its run config when there is one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise KieloError(f"adapter {p} does not exist", "check the path to the adapter or run folder")
    if not has_adapter(p):
        raise KieloError(f"{p} holds no LoRA adapter (adapter_config.json)", "point to a kielo run folder or PEFT adapter")
    check_adapter_files(p)
    return str(p), read_run_config(p)
