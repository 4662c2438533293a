"""The language a row's answer should be in, when the row says so or its task implies it.

In order: the row's tag (``answer_lang``, as kielo's data sets carry on every row); for a translation row
(its task named like ``translation_fi_en``, or untagged with an instruction that asks to translate), the
target language from the task name, a ``target_lang`` key, or the instruction ("englanniksi", "into
English"). Anything else is unknown (None): such rows are left out of the language share rather than
assumed Finnish, which scored a Finnish answer to "translate into English" as right.
"""

from __future__ import annotations

import re

from kielo.lang import LANGUAGES

# Translative case ("into X") in Finnish instructions, and the English names, per ISO 639-1 code.
_FINNISH_INTO = {
    "fi": "suomeksi",
    "en": "englanniksi",
    "sv": "ruotsiksi",
    "et": "viroksi",
    "de": "saksaksi",
    "fr": "ranskaksi",
    "es": "espanjaksi",
    "ru": "venäjäksi",
    "it": "italiaksi",
    "nl": "hollanniksi",
    "da": "tanskaksi",
    "nb": "norjaksi",
    "pl": "puolaksi",
}
_ENGLISH_NAMES = {
    "fi": "finnish",
    "en": "english",
    "sv": "swedish",
    "et": "estonian",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "ru": "russian",
    "it": "italian",
    "nl": "dutch",
    "da": "danish",
    "nb": "norwegian",
    "pl": "polish",
}
# "englanniksi", "englannin kielelle", "into English"; "suomenna" (into Finnish). Not "englanninkielinen":
# it names the source as often as the target ("käännä englanninkielinen teksti suomeksi").
_INTO = [(code, re.compile(rf"\b(?:{word}|{word[:-3]}n\s+kielelle)\b", re.IGNORECASE)) for code, word in _FINNISH_INTO.items()] + [
    (code, re.compile(rf"\b(?:into|to)\s+{name}\b", re.IGNORECASE)) for code, name in _ENGLISH_NAMES.items()
]
_INTO.append(("fi", re.compile(r"\bsuomenn", re.IGNORECASE)))
_TRANSLATE = re.compile(r"\b(?:kään[nt]|suomenn|translat)", re.IGNORECASE)
_TRANSLATION_TASK = re.compile(r"transl|käänn", re.IGNORECASE)
TARGET_KEYS = ("target_lang", "tgt_lang")


def _code(value) -> str | None:
    """A tag as a language code kielo can check (``"FI"`` is ``fi``); None for anything else."""
    code = str(value or "").strip().lower()
    return code if code in LANGUAGES else None


def _target_in_text(text: str) -> str | None:
    """The one language the text asks to translate into; None when it names none or several."""
    found = {code for code, pattern in _INTO if pattern.search(text)}
    return found.pop() if len(found) == 1 else None


def _task_target(task: str) -> str | None:
    """``translation_fi_en`` / ``translation-fi-en`` -> ``en``: the last of two language codes ending the name."""
    parts = [p for p in re.split(r"[^a-z]+", task.lower()) if p]
    if len(parts) >= 3 and _code(parts[-1]) and _code(parts[-2]):
        return parts[-1]
    return None


def expected_answer_language(meta: dict, instruction: str) -> str | None:
    """The ISO 639-1 code the answer should be in, or None when the row doesn't tell (see the module doc).

    ``meta`` is the row's extra keys; ``instruction`` the text of its last user turn.
    """
    if meta.get("answer_lang"):
        return _code(meta["answer_lang"])
    task = str(meta.get("task") or "")
    if not (_TRANSLATION_TASK.search(task) or (not task and _TRANSLATE.search(instruction))):
        return None
    for key in TARGET_KEYS:
        if meta.get(key):
            return _code(meta[key])
    return _task_target(task) or _target_in_text(instruction)
