"""What training recorded for each adapter of a comparison: its curve (``metrics.jsonl``) and its
hyperparameters (the saved ``kielo_config.yaml``), read from the run folder the adapter came from.

An adapter that is a checkpoint (``checkpoints/step-N``) shows the curve of its whole run; a plain PEFT
folder without a kielo run around it has neither and is left out.
"""

from __future__ import annotations

from pathlib import Path

from kielo.runs.saved import find_run_config, is_run_folder, read_metrics, read_run_config

# The config sections that are the run's hyperparameters, in the order a reader looks for them.
SECTIONS = ("model", "quantization", "lora", "data", "training")
TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s")


def _flat(section: str, values: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(f"{section}.{key}", value))
        else:
            out[f"{section}.{key}"] = value
    return out


def hyperparameters(config: dict) -> dict[str, object]:
    """The saved config's :data:`SECTIONS` as ``{"lora.r": 16, ...}`` (nested keys joined with dots)."""
    out: dict[str, object] = {}
    for section in SECTIONS:
        if isinstance(config.get(section), dict):
            out.update(_flat(section, config[section]))
    return out


def run_training(adapter: str | Path) -> dict | None:
    """The run an adapter came from: ``{run, train: [{step, loss, lr, ...}], validation: [{step, loss}],
    hyperparameters}``; None when the adapter is not inside a kielo run folder."""
    config_path = find_run_config(adapter)
    if config_path is None or not is_run_folder(config_path.parent):  # a report folder has a config too
        return None
    run = config_path.parent
    records = read_metrics(run)
    train = [{k: r[k] for k in TRAIN_FIELDS if k in r} for r in records if r.get("split", "train") == "train"]
    validation = [{"step": r["step"], "loss": r["loss"]} for r in records if r.get("split") == "validation"]
    return {"run": str(run), "train": train, "validation": validation, "hyperparameters": hyperparameters(read_run_config(run) or {})}


def training_runs(variants: list[dict]) -> dict[str, dict]:
    """:func:`run_training` of every variant with an adapter (``[{name, adapter}]``), by variant name."""
    out = {}
    for v in variants:
        found = run_training(v["adapter"]) if v.get("adapter") else None
        if found is not None:
            out[v["name"]] = found
    return out
