"""Reading a saved run back: its config, summary and metrics, from the run folder or one of its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kielo.config.load import CONFIG_FILE, from_dict
from kielo.config.schema import Config
from kielo.errors import KieloError

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINTS = "checkpoints"


def find_run_config(folder: str | Path) -> Path | None:
    """The saved config of a run folder or of a checkpoint inside one (``checkpoints/step-N``)."""
    folder = Path(folder)
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / CONFIG_FILE).is_file():
            return candidate / CONFIG_FILE
    return None


def _load_config_file(path: Path) -> dict:
    """A saved ``kielo_config.yaml`` as plain data; a damaged one is an error naming it, not a YAML traceback."""
    fix = "re-train, or restore that file from the run"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise KieloError(f"{path} is damaged ({str(e).splitlines()[0][:200]})", fix) from None
    # Callers read cfg["model"]["name"] etc.; a list or a scalar there would fail far from the file.
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model") or {}, dict):
        raise KieloError(f"{path} is not a kielo config (no `model:` section)", fix)
    return cfg


def read_run_config(folder: str | Path) -> dict | None:
    """The saved config of a run folder (or checkpoint) as plain data, unvalidated (runs saved by other kielo
    versions may hold keys this one lacks); None when there is none."""
    path = find_run_config(folder)
    return _load_config_file(path) if path else None


def saved_config(folder: str | Path) -> Config | None:
    """The saved config of the run in ``folder`` itself, validated; None when it has none."""
    path = Path(folder) / CONFIG_FILE
    return from_dict(_load_config_file(path)) if path.is_file() else None


def has_adapter(folder: str | Path) -> bool:
    """Whether ``folder`` holds a LoRA adapter (a finished run, a checkpoint or a plain PEFT folder)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a training run (an adapter or checkpoints)."""
    return has_adapter(folder) or (Path(folder) / CHECKPOINTS).is_dir()


def read_summary(folder: str | Path) -> dict | None:
    """A finished run's summary.json; None while the run has not finished."""
    path = Path(folder) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_metrics(folder: str | Path) -> list[dict]:
    """The records training logged in metrics.jsonl, in order ([] when there are none)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
