"""A run folder's learning curve: its checkpoints (and final adapter) located, its validation losses read.

The loss of each checkpoint on the evaluation data is computed by :mod:`kielo.evaluate.run` like any other
variant's; this module only finds what to evaluate and what training already logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kielo.runs.folder import checkpoint_step, list_checkpoints
from kielo.runs.saved import has_adapter, read_metrics, read_summary


@dataclass
class CurvePoint:
    step: int
    path: str  # adapter folder (a checkpoint, or the run folder for the final adapter)


def run_points(run_dir: str | Path) -> list[CurvePoint]:
    """The run's checkpoints, oldest first, then its final adapter (when the run finished)."""
    run = Path(run_dir)
    points = [CurvePoint(checkpoint_step(p), str(p)) for p in list_checkpoints(run)]
    summary = read_summary(run)
    if summary is not None and has_adapter(run):
        steps = summary.get("steps")
        if steps is not None and all(p.step != steps for p in points):
            points.append(CurvePoint(int(steps), str(run)))
    return points


def validation_history(run_dir: str | Path) -> list[dict]:
    """``[{step, loss}]`` of the validation losses training logged in ``metrics.jsonl``."""
    return [{"step": r["step"], "loss": r["loss"]} for r in read_metrics(run_dir) if r.get("split") == "validation"]


def has_checkpoints(path: str | Path) -> bool:
    """Whether ``path`` is a run folder with at least one checkpoint."""
    return bool(list_checkpoints(path))
