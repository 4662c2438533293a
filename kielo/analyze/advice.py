"""What the numbers mean for training: a recommended ``data.max_length`` and warnings worth acting on."""

from __future__ import annotations

import math

import numpy as np

ROUND_TO = 64  # GPU kernels and memory planning like multiples of 64
PADDING_WARN = 0.30  # padding share of the configured batches worth switching to packing for
LEAK_SHOWN = 3


def recommend_max_length(totals: np.ndarray, configured: int, split: str) -> dict:
    """The smallest multiple of 64 covering the 99th percentile of example lengths (of the training split)."""
    if len(totals) == 0:
        return {}
    p99 = float(np.percentile(totals, 99))
    suggested = max(ROUND_TO, math.ceil(p99 / ROUND_TO) * ROUND_TO)
    return {
        "split": split,
        "p99": round(p99, 1),
        "longest": int(totals.max()),
        "suggested": suggested,
        "suggested_covers": round(float((totals <= suggested).mean()), 4),
        "configured": configured,
        "configured_covers": round(float((totals <= configured).mean()), 4),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def warnings(result: dict) -> list[str]:
    """Plain-language findings that would hurt training, most serious first within each split."""
    out = []
    rec = result.get("max_length")
    if rec and rec["configured_covers"] < 0.99:
        out.append(
            f"data.max_length={rec['configured']} covers only {_pct(rec['configured_covers'])} of "
            f"{rec['split']} examples; --data.max_length {rec['suggested']} would cover {_pct(rec['suggested_covers'])}"
        )
    for name, s in result["splits"].items():
        if s["response_cut_entirely"]:
            out.append(
                f"{name}: {s['response_cut_entirely']} example(s) have a prompt of data.max_length tokens or more: "
                f"their answer is cut entirely and they train on nothing "
                f"(e.g. {', '.join(s['response_cut_entirely_where'][:LEAK_SHOWN])})"
            )
        if s["over_max_length"]:
            fate = f"{s['truncated']} truncated (their answers lose the end token)" if s["truncated"] else ""
            if s["dropped_overlong"]:
                fate += ("; " if fate else "") + f"{s['dropped_overlong']} dropped (data.overlong=drop)"
            out.append(
                f"{name}: {s['over_max_length']} example(s) ({_pct(s['over_max_length_share'])}) are longer than "
                f"data.max_length={s['max_length']}: {fate or 'none kept'}; {s['tokens_lost']} tokens "
                f"({_pct(s['tokens_lost_share'])}) are lost"
            )
        end = s["end_token"]
        if end["missing_other"]:
            out.append(
                f"{name}: {end['missing_other']} example(s) do not end their trained span with the end token "
                f"although nothing was cut: check the template (e.g. {', '.join(end['missing_other_where'][:LEAK_SHOWN])})"
            )
        if s["double_bos"]:
            out.append(
                f"{name}: the template and tokenizer both add BOS in {s['double_bos']} example(s) "
                "(kielo removes the extra one; check the template)"
            )
        if s["empty_fields"]["examples"]:
            fields = ", ".join(f"{k}: {v}" for k, v in s["empty_fields"]["by_field"].items())
            out.append(
                f"{name}: {s['empty_fields']['examples']} example(s) have empty or whitespace-only fields ({fields}), "
                f"e.g. {', '.join(s['empty_fields']['where'][:LEAK_SHOWN])}"
            )
        dup = result["duplicates"]["splits"][name]
        if dup["exact"] or dup["near"]:
            out.append(
                f"{name}: {dup['exact']} exact and {dup['near']} near duplicate(s) "
                f"(5-gram Jaccard ≥ {result['duplicates']['threshold']})"
            )
        lang = result["languages"].get(name, {})
        if lang.get("answer_not_in_answer_lang"):
            first = lang["answer_not_in_answer_lang_where"][0]
            out.append(
                f"{name}: {lang['answer_not_in_answer_lang']} of {lang['checked']} checked answers are not in "
                f"their row's answer_lang (e.g. {first['where']}: {first['found']}, expected {first['expected']})"
            )
        budget = result["token_budget"].get(name, {})
        used = budget.get("modes", {}).get(budget.get("training_uses"), {})
        training_split = name == next(iter(result["splits"]))
        if training_split and budget.get("training_uses") == "padded" and used.get("padding_share", 0) > PADDING_WARN:
            packed = budget["modes"]["packed"]
            out.append(
                f"{name}: {_pct(used['padding_share'])} of the micro-batch tokens are padding; "
                f"--data.packing true would cut that to {_pct(packed['padding_share'])}"
            )
    for o in result["duplicates"]["overlap"]:
        if o["exact_or_near"]:
            out.append(
                f"{o['b']}: {o['exact_or_near']} example(s) ({_pct(o['share_of_b'])}) also appear in {o['a']} "
                f"({o['exact']} exact): validation on them measures memorization"
            )
    return out
