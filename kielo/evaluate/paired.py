"""What changed between the base and one adapter on the same examples: paired deltas with intervals,
per-example loss differences, and the answers that got most better and worse.
"""

from __future__ import annotations

import statistics

from kielo.evaluate import stats
from kielo.evaluate.scores import GENERATION_METRICS

WINS_SHOWN = 5


def deltas(base_rows: list[dict], rows: list[dict], resamples: int) -> dict:
    """Paired deltas (this model minus the base) of the loss and every generation metric, on shared examples."""
    out = {}
    pairs = [(b, r) for b, r in zip(base_rows, rows, strict=True) if b["loss"] is not None and r["loss"] is not None]
    out["loss"] = (
        stats.paired_bootstrap(
            [b["loss"] for b, _ in pairs],
            [r["loss"] for _, r in pairs],
            weights=[b["loss_tokens"] for b, _ in pairs],
            resamples=resamples,
        )
        if pairs
        else None
    )
    for metric in GENERATION_METRICS:
        both = [
            (b[metric.key], r[metric.key])
            for b, r in zip(base_rows, rows, strict=True)
            if b["generation"] is not None
            and r["generation"] is not None
            and b.get(metric.key) is not None
            and r.get(metric.key) is not None
        ]
        out[metric.key] = (
            stats.paired_bootstrap([float(x) for x, _ in both], [float(y) for _, y in both], resamples=resamples) if both else None
        )
    return out


def deltas_by_task(base_rows: list[dict], rows: list[dict], resamples: int) -> dict:
    """:func:`deltas` within each task type."""
    tasks = sorted({r["task"] for r in rows})
    return {t: deltas([r for r in base_rows if r["task"] == t], [r for r in rows if r["task"] == t], resamples) for t in tasks}


def quality(row: dict) -> float | None:
    """One number per generated answer for ranking wins and losses: mean of task success and chrF/100
    (ROUGE-L without chrF), over those that apply."""
    text_score = row["chrf"] / 100 if row.get("chrf") is not None else row.get("rouge_l")
    parts = [float(x) for x in (row.get("task_success"), text_score) if x is not None]
    return sum(parts) / len(parts) if parts else None


def side_by_side(base: dict, row: dict) -> dict:
    """One example's prompt, reference and both answers with their headline metrics, for the reports."""
    keep = ("chrf", "task_success", "end_token", "expected_language", "loss")
    return {
        "id": row["id"],
        "task": row["task"],
        "prompt": row["prompt"],
        "reference": row["reference"],
        "base": base["generation"],
        "adapter": row["generation"],
        "quality_base": quality(base),
        "quality_adapter": quality(row),
        "base_metrics": {k: base.get(k) for k in keep},
        "adapter_metrics": {k: row.get(k) for k in keep},
    }


def wins_and_losses(base_rows: list[dict], rows: list[dict], shown: int = WINS_SHOWN) -> dict:
    """The generated examples where this model's answer scored most above and below the base's."""
    scored = []
    for b, r in zip(base_rows, rows, strict=True):
        qb, qr = quality(b), quality(r)
        if qb is not None and qr is not None and b["generation"] is not None:
            loss_delta = r["loss"] - b["loss"] if r["loss"] is not None and b["loss"] is not None else 0.0
            scored.append((qr - qb, -loss_delta, b, r))
    scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
    wins = [side_by_side(b, r) | {"delta": d} for d, _, b, r in scored[:shown] if d > 0]
    losses = [side_by_side(b, r) | {"delta": d} for d, _, b, r in reversed(scored[-shown:]) if d < 0]
    return {"wins": wins, "losses": losses, "ranked": len(scored)}


def loss_differences(base_rows: list[dict], rows: list[dict]) -> dict:
    """Per-example loss change (this model minus the base, mean token loss of each example)."""
    diffs = [
        {"id": r["id"], "task": r["task"], "delta": r["loss"] - b["loss"]}
        for b, r in zip(base_rows, rows, strict=True)
        if b["loss"] is not None and r["loss"] is not None
    ]
    if not diffs:
        return {"n": 0}
    values = sorted(d["delta"] for d in diffs)
    ranked = sorted(diffs, key=lambda d: d["delta"])
    return {
        "n": len(diffs),
        "mean": sum(values) / len(values),
        "median": statistics.median(values),
        "improved_share": sum(v < 0 for v in values) / len(values),
        "most_improved": ranked[:WINS_SHOWN],
        "most_worsened": ranked[::-1][:WINS_SHOWN],
        "deltas": [d["delta"] for d in diffs],
    }
