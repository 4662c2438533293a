"""Share of each language among prompts and answers, with kielo's one language check (:mod:`kielo.lang`).

The check runs two detectors per text (about a millisecond each), so large splits are measured on a
seeded random sample; the report says how many examples were checked.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from kielo.data.records import Example
from kielo.lang import NEUTRAL, detect_language

JUDGED_WORDS = 4
CHECKED_CHARS = 400
_WORD = re.compile(r"[^\W\d_]+")


def sample_indices(n: int, size: int, seed: int) -> list[int]:
    """``size`` indices of ``n`` (all when ``size`` is 0 or at least ``n``), in order."""
    if size <= 0 or size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), size))


def _head(text: str) -> str:
    """The first CHECKED_CHARS characters, cut at a space: the detectors' time grows with the text's length,
    and a few sentences show its language as well as a page does."""
    if len(text) <= CHECKED_CHARS:
        return text
    cut = text.rfind(" ", 0, CHECKED_CHARS)
    return text[: cut if cut > 0 else CHECKED_CHARS]


def prompt_and_answer(example: Example) -> tuple[str, str]:
    """The last user message and the answer to it."""
    return next((m["content"] for m in reversed(example.messages) if m["role"] == "user"), ""), example.reference


def texts_to_check(example: Example) -> tuple[str, str]:
    """The start of the prompt and of the answer, as the language check sees them."""
    prompt, answer = prompt_and_answer(example)
    return _head(prompt), _head(answer)


def detect_many(texts: list[str]) -> list[str]:
    """ISO 639-1 codes (or ``neutral``) of ``texts``."""
    return [detect_language(t) for t in texts]


def _shares(codes: list[str]) -> dict[str, float]:
    counts = Counter(codes)
    return {code: round(c / len(codes), 4) for code, c in counts.most_common()} if codes else {}


def language_summary(
    examples: list[Example], indices: list[int], prompt_langs: list[str], answer_langs: list[str], shown: int = 5
) -> dict:
    """Shares per language, and answers whose language differs from the row's ``answer_lang`` (when rows have one).

    Answers of fewer than ``JUDGED_WORDS`` words are not judged against ``answer_lang``: on a single word
    ("tiede", "neutraali") the detectors disagree too often to call it a data problem.
    """
    mismatched = []
    for i, found in zip(indices, answer_langs, strict=True):
        expected = examples[i].meta.get("answer_lang")
        if len(_WORD.findall(examples[i].reference)) < JUDGED_WORDS:
            continue
        if isinstance(expected, str) and found not in (expected, NEUTRAL):
            mismatched.append({"where": examples[i].source, "expected": expected, "found": found})
    return {
        "checked": len(indices),
        "of": len(examples),
        "prompt": _shares(prompt_langs),
        "answer": _shares(answer_langs),
        "answer_not_in_answer_lang": len(mismatched),
        "answer_not_in_answer_lang_where": mismatched[:shown],
    }
