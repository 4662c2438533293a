"""The short table a finished training run ends with: what a person checks first (the full record is summary.json)."""

from __future__ import annotations

from kielo.report.blocks import Table
from kielo.report.text import table


def _loss_change(first: float | None, last: float | None) -> str:
    if first is None or last is None:
        return "—"
    return f"{first:.4f} → {last:.4f}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m {s:02d}s" if hours else f"{m}m {s:02d}s" if m else f"{seconds:.1f} s"


def _preference_rows(pref: dict) -> list[list[str]]:
    """Preference accuracy, reward margin and chosen/rejected rewards: validation start → end, else the last step."""
    start, end, last = pref.get("validation_start"), pref.get("validation_end"), pref.get("train_last") or {}
    rows = []
    for key, label in (("rewards/accuracy", "preference accuracy"), ("rewards/margin", "reward margin")):
        if start and end:
            rows.append([f"{label} (validation)", _loss_change(start.get(key), end.get(key))])
        if key in last:
            rows.append([f"{label} (last step)", f"{last[key]:.4f}"])
    if "rewards/chosen" in last:
        rows.append(["rewards chosen / rejected (last step)", f"{last['rewards/chosen']:.4f} / {last['rewards/rejected']:.4f}"])
    return rows


def summary_table(summary: dict, adapter: str) -> str:
    """``summary`` (what :func:`kielo.train.trainer.train` returns) as an aligned two-column table."""
    peak = summary.get("peak_memory_bytes")
    rows = [
        [
            "steps",
            f"{summary['steps']} ({summary['epochs']:.2f} epochs)"
            if summary.get("epochs") is not None
            else f"{summary['steps']} (streamed)",
        ],
        ["time", _duration(summary["wall_time_s"])],
        ["train loss", _loss_change(summary.get("train_loss_first"), summary.get("train_loss_last"))],
        [
            "validation loss",
            _loss_change(summary.get("validation_loss_start"), summary.get("validation_loss_end"))
            if summary.get("validation_loss_start") is not None
            else "— (no validation data)",
        ],
        ["tokens trained", f"{summary.get('tokens_seen', 0):,}"],
        ["peak memory", f"{peak / 2**30:.2f} GiB ({summary.get('device', '?')})" if peak else "—"],
        ["adapter", adapter],
    ]
    pref = summary.get("preference")
    if pref:
        rows[2][0] = f"train loss ({summary.get('objective')})"
        rows[4:4] = _preference_rows(pref)
    if summary.get("skipped_steps"):
        rows.insert(3, ["skipped steps", ", ".join(str(s) for s in summary["skipped_steps"])])
    return table(Table(columns=["training run", ""], rows=rows))


def stopped_table(stopped: dict, output_dir: str) -> str:
    """A run stopped by a signal at a step boundary: where it stopped, its checkpoint, and how to go on."""
    rows = [
        ["stopped by", stopped["stopped"]],
        ["at step", f"{stopped['step']} of {stopped['steps']}"],
        ["checkpoint", stopped.get("checkpoint") or "— (none written yet: a resume starts over)"],
        ["continue with", f"kielo train ... --output_dir {output_dir} --resume"],
    ]
    return table(Table(columns=["training run", ""], rows=rows))
