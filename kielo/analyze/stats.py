"""Per-split numbers: token lengths, what ``data.max_length`` cuts, end tokens, double BOS, empty fields.

Lengths are measured before ``max_length`` is applied (what the data holds); what is cut and kept comes
from the encoder's own :meth:`~kielo.data.encode.Encoder.fit_all`, as in training.
"""

from __future__ import annotations

import numpy as np

from kielo.data.encode import IGNORE, Encoded, EncodeStats
from kielo.data.records import Example

PERCENTILES = (90, 95, 99)
SHOWN = 5  # example locations listed per finding


def length_features(encoded: list[Encoded], max_length: int) -> dict[str, np.ndarray]:
    """Per-example token counts of the full encoding (call before fitting, which truncates in place).

    ``prompt``: tokens before the first answer; ``response``: tokens of all answers with their end tokens;
    ``total``: the whole example. ``cut_entirely``: longer than ``max_length`` with no trained token within it.
    """
    total = np.fromiter((len(e.input_ids) for e in encoded), dtype=np.int64, count=len(encoded))
    cut = np.zeros(len(encoded), dtype=bool)
    for i in np.flatnonzero(total > max_length):
        cut[i] = encoded[i].labels[:max_length].count(IGNORE) == max_length
    return {
        "prompt": np.fromiter((e.prompt_tokens for e in encoded), dtype=np.int64, count=len(encoded)),
        "response": np.fromiter((e.response_tokens for e in encoded), dtype=np.int64, count=len(encoded)),
        "total": total,
        "cut_entirely": cut,
    }


def summarize(values: np.ndarray) -> dict[str, float]:
    """min, mean, median, p90, p95, p99, max."""
    if len(values) == 0:
        return {}
    out = {"min": int(values.min()), "mean": round(float(values.mean()), 1), "median": float(np.median(values))}
    for p in PERCENTILES:
        out[f"p{p}"] = round(float(np.percentile(values, p)), 1)
    out["max"] = int(values.max())
    return out


def histogram(values: np.ndarray, bins: int = 40) -> dict[str, list]:
    """Counts over equal-width bins from 0 to the maximum (the JSON twin of the plotted histogram)."""
    top = max(int(values.max()) if len(values) else 1, 1)
    counts, edges = np.histogram(values, bins=bins, range=(0, top))
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}


def empty_fields(examples: list[Example]) -> dict:
    """Messages whose content is empty or whitespace only, per role, plus whitespace-only alpaca ``input``s."""
    by_role: dict[str, int] = {}
    where = []
    for ex in examples:
        hit = False
        for m in ex.messages:
            if not m["content"].strip():
                by_role[m["role"]] = by_role.get(m["role"], 0) + 1
                hit = True
        raw_input = ex.meta.get("input")
        if isinstance(raw_input, str) and raw_input and not raw_input.strip():
            by_role["input"] = by_role.get("input", 0) + 1
            hit = True
        if hit:
            where.append(ex.source)
    return {"examples": len(where), "by_field": by_role, "where": where[:SHOWN]}


def split_stats(examples: list[Example], feats: dict[str, np.ndarray], kept: list[Encoded], st: EncodeStats, max_length: int) -> dict:
    """Every per-split number except duplicates, languages and batches."""
    total = feats["total"]
    n_tokens = int(total.sum())
    over = total > max_length
    truncated = sum(1 for e in kept if e.truncated)
    with_end = sum(1 for e in kept if e.ends_with_end_token)
    no_end_template = [examples[e.index].source for e in kept if not e.truncated and not e.ends_with_end_token]
    return {
        "examples": len(examples),
        "tokens": n_tokens,
        "lengths": {k: summarize(feats[k]) for k in ("prompt", "response", "total")},
        "histograms": {k: histogram(feats[k]) for k in ("prompt", "response", "total")},
        "max_length": max_length,
        "over_max_length": int(over.sum()),
        "over_max_length_share": round(float(over.mean()), 4) if len(total) else 0.0,
        "truncated": st.truncated,
        "dropped_overlong": st.dropped_overlong,
        "dropped_no_target": st.dropped_no_target,
        "tokens_lost": st.tokens_lost,
        "tokens_lost_share": round(st.tokens_lost / n_tokens, 4) if n_tokens else 0.0,
        "response_cut_entirely": int(feats["cut_entirely"].sum()),
        "response_cut_entirely_where": [examples[i].source for i in np.flatnonzero(feats["cut_entirely"])[:SHOWN]],
        "kept": st.kept,
        "end_token": {
            "present": with_end,
            "missing_truncated": truncated,
            "missing_other": len(no_end_template),
            "missing_other_where": no_end_template[:SHOWN],
        },
        "double_bos": st.double_bos,
        "empty_fields": empty_fields(examples),
    }
