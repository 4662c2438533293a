"""Per-task success checks from a row's metadata: did the answer do what the task asked?

``task_success(meta, answer, reference)`` returns True/False, or None when the task has no check (open
questions, translations: their quality is in chrF and ROUGE-L) or the row lacks what the check needs.
The checks, by ``meta["task"]``:
- arithmetic: the number after the last "Vastaus:" (else the last number) equals ``meta["answer"]``;
- classification: the answer is exactly the reference label (one of ``meta["labels"]``);
- extraction: every string of ``meta["facts"]`` appears in the answer;
- format: ``meta["constraint"]`` holds: ``one_sentence``, ``bullets`` with ``n`` items, ``number_only``;
- list: the answer is a list ("- " or "1. " lines only) with as many items as the reference.
"""

from __future__ import annotations

import re

from kielo.evaluate.metrics import normalize

# Finnish numbers: "2 640" (space as thousands separator), "3,5" (decimal comma), "−5" (minus sign).
_NUMBER = re.compile(r"[-−]?\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:[.,]\d+)?(?!\d)|[-−]?\d+(?:[.,]\d+)?")
_ANSWER_MARK = re.compile(r"vastaus\s*:", re.IGNORECASE)
_BULLET = re.compile(r"^[-*•]\s+\S")
_LIST_ITEM = re.compile(r"^(?:[-*•]|\d+[.)])\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)")
_NUMBER_ONLY = re.compile(rf"^(?:{_NUMBER.pattern})\.?$")


def parse_number(token: str) -> float:
    """A number as written in Finnish or English text (``"2 640"``, ``"3,5"``, ``"−5"``)."""
    clean = re.sub(r"[ \u00a0\u202f]", "", token).replace("−", "-").replace(",", ".")
    return float(clean)


def answer_number(text: str) -> float | None:
    """The final answer of a worked solution: the first number after the last "Vastaus:", else the last number."""
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        found = _NUMBER.search(text, marks[-1].end())
        if found:
            return parse_number(found.group())
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def is_one_sentence(text: str) -> bool:
    """One line holding one sentence (no sentence end followed by more text)."""
    lines = _lines(text)
    return len(lines) == 1 and len(_SENTENCE_END.split(lines[0])) == 1


def bullet_count(text: str) -> int | None:
    """Number of bullet items when every line is a bullet ("- ", "* ", "• "); None otherwise."""
    lines = _lines(text)
    if not lines or not all(_BULLET.match(line) for line in lines):
        return None
    return len(lines)


def list_items(text: str) -> int | None:
    """Number of list items when every line is one ("- " or "1. "); None otherwise."""
    lines = _lines(text)
    if not lines or not all(_LIST_ITEM.match(line) for line in lines):
        return None
    return len(lines)


def is_number_only(text: str) -> bool:
    return _NUMBER_ONLY.match(text.strip()) is not None


def check_format(constraint: dict, answer: str) -> bool | None:
    kind = constraint.get("type")
    if kind == "one_sentence":
        return is_one_sentence(answer)
    if kind == "bullets":
        return bullet_count(answer) == constraint.get("n")
    if kind == "number_only":
        return is_number_only(answer)
    return None


def _same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def task_success(meta: dict, answer: str, reference: str = "") -> bool | None:
    """Whether ``answer`` solves the row's task (None: no check for this task, or nothing to check against)."""
    task = meta.get("task")
    if task == "arithmetic":
        expected = meta.get("answer")
        if expected is None and reference:
            expected = answer_number(reference)
        if expected is None:
            return None
        got = answer_number(answer)
        return got is not None and _same_number(got, float(expected))
    if task == "classification":
        if not reference.strip():
            return None
        return normalize(answer) == normalize(reference)
    if task == "extraction":
        facts = meta.get("facts") or []
        if not facts:
            return None
        text = " ".join(answer.lower().split())
        return all(" ".join(str(f).lower().split()) in text for f in facts)
    if task == "format":
        constraint = meta.get("constraint")
        return check_format(constraint, answer) if isinstance(constraint, dict) else None
    if task == "list":
        got = list_items(answer)
        if got is None:
            return False
        want = list_items(reference) if reference.strip() else None
        return got >= 2 if want is None else got == want
    return None
