"""kielo's one language check: which language a (short) answer is in.

Two offline detectors vote: lingua (strong on single words and short phrases) and py3langid (strong on
sentences with proper nouns), both restricted to the languages a Finnish user's data plausibly holds,
their confidences summed. Answers with no letters (numbers, symbols) are language-neutral: they count as
being in any expected language. Every command that reports "answered in Finnish" calls this module.
"""

from __future__ import annotations

import re
from functools import lru_cache

NEUTRAL = "neutral"
# ISO 639-1 codes considered; Finnish first, its neighbours, and the languages users translate to and from.
LANGUAGES = ("fi", "en", "sv", "et", "de", "fr", "es", "ru", "it", "nl", "da", "nb", "pl")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


@lru_cache(maxsize=1)
def _langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages([c if c != "nb" else "no" for c in LANGUAGES])
    return ident


@lru_cache(maxsize=1)
def _lingua():
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError:  # optional: py3langid alone is weaker on one-word answers
        return None
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*langs).build()


def language_scores(text: str) -> dict[str, float]:
    """Summed confidence per language code (higher is likelier); empty for language-neutral text."""
    if not _LETTER.search(text or ""):
        return {}
    scores = dict.fromkeys(LANGUAGES, 0.0)
    for code, prob in _langid().rank(text):
        code = "nb" if code == "no" else code
        scores[code] += float(prob)
    detector = _lingua()
    if detector is not None:
        for value in detector.compute_language_confidence_values(text):
            scores[value.language.iso_code_639_1.name.lower()] += float(value.value)
    return scores


def detect_language(text: str) -> str:
    """The ISO 639-1 code of ``text``'s language, or ``"neutral"`` when it has no letters."""
    scores = language_scores(text)
    if not scores:
        return NEUTRAL
    return max(scores, key=scores.get)


def in_language(text: str, expected: str) -> bool:
    """Whether ``text`` is in the ``expected`` language (language-neutral text always is)."""
    found = detect_language(text)
    return found == NEUTRAL or found == expected
