"""A run folder's learning curve: its checkpoints (and final adapter) located, its validation losses read.

:func:`learning_curve` computes the loss of each checkpoint on the evaluation data (a checkpoint that is also a
compared variant reuses that variant's result) beside what training already logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kielo.data.batches import eval_batch_size
from kielo.evaluate.loss import example_losses
from kielo.model.bundle import Bundle, use_variant
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


def learning_curve(
    bundle: Bundle, name_paths: dict[str, str], curve_points: dict, encoded: list, results: dict, base: str = "base"
) -> dict:
    """Loss of the base (step 0), every checkpoint and the final adapter of each run folder in ``curve_points``
    (run -> :func:`run_points`), the checkpoints loaded as variants of ``bundle`` beside the compared ones."""
    by_path = {str(Path(p).resolve()): n for n, p in name_paths.items()}
    base_loss = results[base]["overall"]["loss"]
    curve = {}
    for run, points in curve_points.items():
        run_name = by_path[str(Path(run).resolve())]
        series = [{"step": 0, "loss": base_loss["loss"] if base_loss else None, "variant": base}]
        for pt in points:
            name = by_path[str(Path(pt.path).resolve())]
            if name in results:
                loss = results[name]["overall"]["loss"]
            else:
                with use_variant(bundle, name):
                    per = example_losses(bundle, encoded, eval_batch_size(bundle.config))
                tokens = sum(n for _, n in per.values())
                loss = {"loss": sum(s for s, _ in per.values()) / tokens} if tokens else None
            series.append({"step": pt.step, "loss": loss["loss"] if loss else None, "variant": name})
        curve[run_name] = {"run": run, "points": series, "validation": validation_history(run)}
    return curve
