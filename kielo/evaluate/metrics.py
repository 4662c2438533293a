"""Reference metrics for one generated answer, and corpus-level diversity.

Every function takes plain strings, so each metric is testable on known values. Scores are per answer;
a model's score is the mean over answers (so the paired bootstrap can resample examples). chrF therefore
is the mean sentence chrF, which differs slightly from sacrebleu's corpus chrF.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from kielo.errors import KieloError

# References of at most this many words count as short answers: exact match and "contains" apply to them.
SHORT_ANSWER_WORDS = 5
_WORD = re.compile(r"\w+", re.UNICODE)
_EDGE_PUNCT = string.punctuation + "–—…«»“”„’‘"


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; punctuation dropped)."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _chrf_metric():
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise KieloError("chrF needs sacrebleu", "pip install 'kielo[eval]'") from None
    return CHRF()


def chrf_available() -> bool:
    """Whether sacrebleu is installed (chrF is skipped with a note otherwise)."""
    try:
        _chrf_metric()
    except KieloError:
        return False
    return True


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (character n-gram F-score, 0-100) from sacrebleu."""
    return float(_chrf_metric().sentence_score(hypothesis, [reference]).score)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) over lower-cased words: longest common subsequence vs both lengths.

    No stemming: Finnish inflection makes English stemmers wrong, and chrF already credits shared stems.
    """
    h, r = words(hypothesis), words(reference)
    if not h or not r:
        return 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, strip punctuation at the ends (``"Helsinki."`` == ``"helsinki"``)."""
    return " ".join(text.lower().split()).strip(_EDGE_PUNCT + " ")


def is_short(reference: str) -> bool:
    """Whether the reference is a short answer (exact match and "contains" are meaningful)."""
    return 0 < len(words(reference)) <= SHORT_ANSWER_WORDS


def exact_match(hypothesis: str, reference: str) -> bool:
    """The answer equals the reference, up to case, spacing and surrounding punctuation."""
    return normalize(hypothesis) == normalize(reference)


def contains(hypothesis: str, reference: str) -> bool:
    """The (short) reference appears in the answer as whole words (``"8"`` is not found in ``"18"``)."""
    ref = normalize(reference)
    if not ref:
        return False
    return re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", " ".join(hypothesis.lower().split())) is not None


def length_ratio(hypothesis: str, reference: str) -> float | None:
    """Answer length over reference length, in words (None for a reference without words)."""
    r = len(words(reference))
    return len(words(hypothesis)) / r if r else None


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str, n: int = 3) -> float:
    """Share of the answer's word n-grams that repeat an earlier one (0 = none; a looping answer nears 1)."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct word n-grams over all n-grams of all answers (Li et al. 2016); None without any n-gram."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else None
