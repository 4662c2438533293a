"""A run folder's learning curve: its checkpoints (and final adapter) located, its validation losses read.

The loss of each checkpoint on the evaluation data is computed by :mod:`kielo.evaluate.run` like any other
variant's; this module only finds what to evaluate and what training already logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kielo.train.checkpoint import STEP_DIR, list_checkpoints
from kielo.train.trainer import METRICS_FILE, SUMMARY_FILE


@dataclass
class CurvePoint:
    step: int
    path: str  # adapter folder (a checkpoint, or the run folder for the final adapter)


def run_points(run_dir: str | Path) -> list[CurvePoint]:
    """The run's checkpoints, oldest first, then its final adapter (when the run finished)."""
    run = Path(run_dir)
    points = [CurvePoint(int(STEP_DIR.match(p.name).group(1)), str(p)) for p in list_checkpoints(run)]
    summary = run / SUMMARY_FILE
    if summary.is_file() and (run / "adapter_config.json").is_file():
        steps = json.loads(summary.read_text(encoding="utf-8")).get("steps")
        if steps is not None and all(p.step != steps for p in points):
            points.append(CurvePoint(int(steps), str(run)))
    return points


def validation_history(run_dir: str | Path) -> list[dict]:
    """``[{step, loss}]`` of the validation losses training logged in ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("split") == "validation":
                out.append({"step": record["step"], "loss": record["loss"]})
    return out


def has_checkpoints(path: str | Path) -> bool:
    """Whether ``path`` is a run folder with at least one checkpoint."""
    return bool(list_checkpoints(path))
