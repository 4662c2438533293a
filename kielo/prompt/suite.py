"""Prompt test suites: a YAML file of prompts with expectations, validated strictly, and the checks.

A suite file::

    name: Finnish basics                 # optional
    description: ...                     # optional
    defaults: {language: fi, ends_with_end_token: true, max_length: 400}
    prompts:
      - id: capital
        prompt: "Mikä on Ruotsin pääkaupunki? Vastaa yhdellä sanalla."
        expect: {contains: Tukholma, max_length: 40}

Each prompt takes the keys of a prompt file entry (``id``, ``prompt``, ``input``, ``system``, ``messages``)
plus ``expect``; ``defaults`` apply to every prompt, its own ``expect`` overrides them, and ``null``
turns a default off. The expectations are :data:`EXPECTATIONS`. A mistake in the file is an error that
names the prompt and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kielo.errors import KieloError
from kielo.lang import LANGUAGES, detect_language, in_language
from kielo.prompt.sources import Prompt, check_unique_ids, prompt_entries, prompt_from_entry, read_yaml_file, suggest
from kielo.resources import locate

if TYPE_CHECKING:  # only the type: checking answers needs no torch
    from kielo.infer.generate import Generation

EXPECTATIONS = {
    "contains": "text, or a list of texts, the answer must contain (case-insensitive)",
    "not_contains": "text, or a list of texts, the answer must not contain (case-insensitive)",
    "regex": "regular expression, or a list, the answer must match (Python re.search; (?i) ignores case)",
    "max_length": "the longest acceptable answer, in characters",
    "language": f"the answer's language by kielo's language check: one of {', '.join(LANGUAGES)}",
    "ends_with_end_token": "true: the model ended the answer itself (not cut by max_new_tokens or a stop string)",
    "json": "true: the answer is valid JSON (one ```-fenced block is accepted)",
}
SUITE_KEYS = ("name", "description", "defaults", "prompts")
_FENCED = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)


@dataclass
class Expectations:
    """What one answer must satisfy; the defaults check nothing."""

    contains: list[str] = field(default_factory=list)
    not_contains: list[str] = field(default_factory=list)
    regex: list[str] = field(default_factory=list)
    max_length: int | None = None
    language: str | None = None
    ends_with_end_token: bool = False
    json: bool = False

    def active(self) -> list[str]:
        """The expectation keys that check something, in the order of :data:`EXPECTATIONS`."""
        return [k for k in EXPECTATIONS if getattr(self, k) not in (None, False, [])]


@dataclass
class Check:
    """The outcome of one expectation on one answer."""

    name: str
    passed: bool
    detail: str = ""  # why it failed, e.g. "missing 'Helsinki'"


@dataclass
class Case:
    prompt: Prompt
    expect: Expectations


@dataclass
class Suite:
    """A validated suite: prompts with their expectations."""

    name: str
    cases: list[Case]
    path: str = ""
    description: str = ""

    @property
    def prompts(self) -> list[Prompt]:
        return [c.prompt for c in self.cases]


def _texts(key: str, value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t for t in items):
        raise KieloError(f"{where} must be a text or a list of non-empty texts, not {value!r}", f'e.g. {key}: ["Helsinki"]')
    return list(items)


def _validate(key: str, value: Any, where: str) -> Any:
    """One expectation value, checked and normalized; ``where`` names the prompt and field."""
    if value is None:
        return None
    if key in ("contains", "not_contains"):
        return _texts(key, value, where)
    if key == "regex":
        patterns = _texts(key, value, where)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise KieloError(
                    f"{where}: the regular expression {pattern!r} does not compile ({e})",
                    "fix the pattern (in YAML, single quotes keep backslashes as they are)",
                ) from None
        return patterns
    if key == "max_length":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise KieloError(f"{where} must be a positive whole number of characters, not {value!r}", "e.g. max_length: 200")
        return value
    if key == "language":
        if value not in LANGUAGES:
            raise KieloError(f"{where} = {value!r} is not a language kielo checks", f"use one of {', '.join(LANGUAGES)}")
        return value
    if not isinstance(value, bool):  # ends_with_end_token, json
        raise KieloError(f"{where} must be true or false, not {value!r}", f"write {key}: true")
    return value


def parse_expectations(raw: Any, where: str) -> dict[str, Any]:
    """Validate an ``expect:`` (or ``defaults:``) mapping; ``None`` values mean "off"."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise KieloError(
            f"{where} must be a mapping of expectations, not {type(raw).__name__}", "write e.g. {contains: [Helsinki], max_length: 40}"
        )
    out = {}
    for key, value in raw.items():
        if key not in EXPECTATIONS:
            raise KieloError(
                f"{where}.{key} is not an expectation",
                f"{suggest(str(key), list(EXPECTATIONS))} Expectations: {', '.join(EXPECTATIONS)}",
            )
        out[key] = _validate(key, value, f"{where}.{key}")
    return out


def parse_suite(data: Any, path: str | Path) -> Suite:
    """Validate a suite's parsed YAML; every error names the prompt and the field."""
    path = Path(path)
    if not isinstance(data, dict) or "prompts" not in data:
        raise KieloError(f"{path}: a suite is a mapping with a `prompts:` list", "see prompts/fi_suite.yaml for an example")
    entries = prompt_entries(data, path, SUITE_KEYS)
    for key in ("name", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise KieloError(f"{path}: `{key}` must be text", f"quote the value of `{key}`")
    defaults = parse_expectations(data.get("defaults"), f"{path}: defaults")
    cases = []
    for i, entry in enumerate(entries, 1):
        prompt = prompt_from_entry(entry, f"{path}: prompt {i}", str(i), extra_keys=("expect",))
        merged = {**defaults, **parse_expectations(prompt.extra.get("expect"), f"{prompt.source}: expect")}
        cases.append(Case(prompt, Expectations(**{k: v for k, v in merged.items() if v is not None})))
    check_unique_ids([c.prompt for c in cases])
    return Suite(data.get("name") or path.stem, cases, str(path), data.get("description") or "")


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file."""
    p = locate(path)
    if not p.is_file():
        raise KieloError(f"suite file {p} does not exist", "check the path given to --suite, e.g. prompts/fi_suite.yaml")
    return parse_suite(read_yaml_file(p), p)


def _parses_as_json(text: str) -> str | None:
    """None when ``text`` (or its one fenced block) is JSON, else the parser's complaint."""
    text = text.strip()
    fenced = _FENCED.match(text)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg} at character {e.pos})"
    return None


def _end_detail(answer: Generation) -> str:
    if answer.stop is not None:
        return f"cut by the stop string {answer.stop!r}"
    return f"cut at max_new_tokens ({answer.tokens} tokens) without the end token"


def check(expect: Expectations, answer: Generation) -> list[Check]:
    """Run every active expectation on one answer; one :class:`Check` per expectation key."""
    text = answer.text
    folded = text.casefold()
    checks = []
    for key in expect.active():
        if key == "contains":
            missing = [t for t in expect.contains if t.casefold() not in folded]
            checks.append(Check(key, not missing, f"missing {', '.join(map(repr, missing))}" if missing else ""))
        elif key == "not_contains":
            found = [t for t in expect.not_contains if t.casefold() in folded]
            checks.append(Check(key, not found, f"contains {', '.join(map(repr, found))}" if found else ""))
        elif key == "regex":
            failed = [p for p in expect.regex if not re.search(p, text)]
            checks.append(Check(key, not failed, f"no match for {', '.join(f'/{p}/' for p in failed)}" if failed else ""))
        elif key == "max_length":
            ok = len(text) <= expect.max_length
            checks.append(Check(key, ok, "" if ok else f"{len(text)} > {expect.max_length} characters"))
        elif key == "language":
            ok = in_language(text, expect.language)
            checks.append(Check(key, ok, "" if ok else f"answered in {detect_language(text)}, expected {expect.language}"))
        elif key == "ends_with_end_token":
            checks.append(Check(key, answer.ended, "" if answer.ended else _end_detail(answer)))
        elif key == "json":
            problem = _parses_as_json(text)
            checks.append(Check(key, problem is None, problem or ""))
    return checks
