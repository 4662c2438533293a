"""Every per-example number of one model, and their means overall and per task type.

A row holds the example's loss (when it has a reference) and, for generated examples, the answer and its
metrics. Metrics that don't apply are None and left out of the means (exact match only for short
references, task success only for tasks with a check, reference metrics only with a reference, the
language share only for rows whose expected language is known).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from kielo.data.records import Example
from kielo.evaluate import metrics as m
from kielo.evaluate.dataset import expected_language, has_reference, last_user_turn, task_of
from kielo.evaluate.tasks import task_success
from kielo.lang import in_language


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool | None  # None: neither (length ratio, answer length)
    percent: bool = False  # a 0-1 share or score, shown as 0-100


# The per-example metrics of a generated answer, in report order. Loss is handled apart: it is a
# token-weighted mean, not a mean over examples.
GENERATION_METRICS: tuple[Metric, ...] = (
    Metric("chrf", "chrF", True),
    Metric("rouge_l", "ROUGE-L", True, percent=True),
    Metric("exact_match", "exact match (short answers)", True, percent=True),
    Metric("contains", "contains the answer (short answers)", True, percent=True),
    Metric("task_success", "task success", True, percent=True),
    Metric("end_token", "ended with the end token", True, percent=True),
    Metric("expected_language", "in the expected language", True, percent=True),
    Metric("repetition", "repeated 3-grams", False, percent=True),
    Metric("length_ratio", "length ratio (answer / reference)", None),
    Metric("answer_tokens", "answer length (tokens)", None),
)
LOSS = Metric("loss", "loss (response tokens)", False)
METRICS_BY_KEY = {x.key: x for x in (LOSS, *GENERATION_METRICS)}


def score_answer(example: Example, answer: str, tokens: int, ended: bool, use_chrf: bool = True) -> dict:
    """All per-example metrics of one generated answer."""
    ref = example.reference if has_reference(example) else ""
    short = bool(ref) and m.is_short(ref)
    return {
        "chrf": m.chrf(answer, ref) if ref and use_chrf else None,
        "rouge_l": m.rouge_l(answer, ref) if ref else None,
        "exact_match": m.exact_match(answer, ref) if short else None,
        "contains": m.contains(answer, ref) if short else None,
        "task_success": task_success(example.meta, answer, ref),
        "end_token": ended,
        "expected_language": _in_expected_language(example, answer),
        "repetition": m.repetition(answer),
        "length_ratio": m.length_ratio(answer, ref) if ref else None,
        "answer_tokens": tokens,
    }


def _in_expected_language(example: Example, answer: str) -> bool | None:
    """Whether the answer is in the row's expected language; None (left out of the share) when that is unknown."""
    lang = expected_language(example)
    if lang is None:
        return None
    # An empty answer is in no language, though the language check calls letterless text neutral.
    return bool(answer.strip()) and in_language(answer, lang)


def mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def token_loss(rows: list[dict]) -> dict | None:
    """Token-weighted mean loss and perplexity of the rows that have a loss."""
    scored = [r for r in rows if r.get("loss_sum") is not None]
    tokens = sum(r["loss_tokens"] for r in scored)
    if not tokens:
        return None
    loss = sum(r["loss_sum"] for r in scored) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": tokens, "examples": len(scored)}


def summarize(rows: list[dict]) -> dict:
    """Means of every metric (with how many examples each covers) and the token-weighted loss."""
    out: dict = {"loss": token_loss(rows), "metrics": {}, "counts": {}}
    generated = [r for r in rows if r.get("generation") is not None]
    for metric in GENERATION_METRICS:
        vals = [r[metric.key] for r in generated if r.get(metric.key) is not None]
        out["metrics"][metric.key] = mean(vals)
        out["counts"][metric.key] = len(vals)
    out["generated"] = len(generated)
    return out


def summarize_by_task(rows: list[dict]) -> dict[str, dict]:
    """:func:`summarize` per task type."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["task"]].append(r)
    return {task: summarize(group) for task, group in sorted(groups.items())}


def corpus_diversity(answers: list[str]) -> dict:
    """distinct-1/2 over all answers together (low values: the model says the same things everywhere)."""
    return {"distinct_1": m.distinct_n(answers, 1), "distinct_2": m.distinct_n(answers, 2)}


def base_row(index: int, example: Example) -> dict:
    """The identifying part of an example's row."""
    return {
        "index": index,
        "id": example.meta.get("id") or Path(example.source).name,  # "file.jsonl:12" without the folder
        "task": task_of(example),
        "prompt": last_user_turn(example),
        "reference": example.reference if has_reference(example) else None,
        "answer_lang": expected_language(example),
    }
