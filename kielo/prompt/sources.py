"""Where prompts come from: command-line arguments, or a text, YAML/JSON or JSONL file.

Every source yields :class:`Prompt` objects: an id, the conversation to answer (ending with the user's
turn) and where it came from, so errors and reports can name it. File formats:

- ``.txt``: prompts separated by blank lines, so a prompt may span lines; a file without blank lines
  holds one prompt per line.
- ``.yaml`` / ``.yml`` / ``.json``: a list of prompts, or a mapping with a ``prompts:`` list (a prompt
  suite is such a file). Each prompt is a string or a mapping with ``prompt`` (and optional ``id``,
  ``input``, ``system``) or ``messages``.
- ``.jsonl``: one prompt per line: a JSON string, ``{"prompt": ...}``, an alpaca-style data row
  (``instruction`` + ``input``; ``output`` is ignored) or a chat row (``messages``; a trailing assistant
  turn, the reference answer, is dropped). kielo's data files can be used as prompt files as they are.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kielo.data.records import ROLES
from kielo.errors import KieloError
from kielo.resources import locate

PROMPT_KEYS = ("id", "prompt", "input", "system", "messages")
FILE_TYPES = (".txt", ".yaml", ".yml", ".json", ".jsonl")


@dataclass
class Prompt:
    """One thing to ask: the conversation up to the user's last turn."""

    id: str
    messages: list[dict[str, str]]
    source: str = ""  # "file:line" or "argument N", for errors and reports
    extra: dict[str, Any] = field(default_factory=dict)  # keys a caller (the suite) reads itself

    @property
    def text(self) -> str:
        """The user's last message: what a table shows as the prompt."""
        return self.messages[-1]["content"]

    def conversation(self, system: str | None = None) -> list[dict[str, str]]:
        """The messages to generate from, with ``system`` first unless the prompt brings its own."""
        if system and self.messages[0]["role"] != "system":
            return [{"role": "system", "content": system}, *self.messages]
        return list(self.messages)


def suggest(key: str, known: tuple[str, ...] | list[str]) -> str:
    """A did-you-mean hint for an unknown key."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"


def user_prompt(text: str, input_text: str | None = None) -> str:
    """Instruction and input joined as kielo's data rows join them, so prompts look like training prompts."""
    return f"{text}\n\n{input_text}" if input_text else text


def from_arguments(texts: list[str]) -> list[Prompt]:
    """One prompt per command-line argument."""
    prompts = [Prompt(str(i), [{"role": "user", "content": t}], f"argument {i}") for i, t in enumerate(texts, 1) if t.strip()]
    if not prompts:
        raise KieloError("the prompt is empty", 'give the prompt text, e.g. kielo prompt "Mikä on Suomen pääkaupunki?"')
    return prompts


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """Validate a chat conversation to ask: roles known, contents text, ending with the user's turn."""
    if not isinstance(value, list) or not value:
        raise KieloError(f"{where}: `messages` must be a non-empty list", 'use [{"role": "user", "content": "..."}]')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise KieloError(
                f"{where}: message {i} needs a `role` ({', '.join(ROLES)}) and a text `content`",
                'use {"role": "user", "content": "..."}',
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] == "assistant":  # a data row: its last turn is the reference answer, not part of the prompt
        out = out[:-1]
    if not out or out[-1]["role"] != "user":
        raise KieloError(f"{where}: the conversation does not end with a user message", "end it with the user's turn")
    return out


def _text_field(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise KieloError(f"{where}: `{key}` must be text, not {type(value).__name__}", f"quote the value of `{key}`")
    return value


def prompt_from_entry(entry: Any, where: str, default_id: str, extra_keys: tuple[str, ...] = ()) -> Prompt:
    """A prompt from a YAML entry: a string, or a mapping of :data:`PROMPT_KEYS` (plus ``extra_keys``)."""
    if isinstance(entry, str):
        entry = {"prompt": entry}
    if not isinstance(entry, dict):
        raise KieloError(
            f"{where}: a prompt must be text or a mapping, not {type(entry).__name__}", "write `- prompt: ...` or `- some text`"
        )
    known = PROMPT_KEYS + extra_keys
    for key in entry:
        if key not in known:
            raise KieloError(f"{where}: unknown key `{key}`", suggest(str(key), known))
    pid = entry.get("id", default_id)
    if not isinstance(pid, (str, int)) or isinstance(pid, bool) or not str(pid).strip():
        raise KieloError(f"{where}: `id` must be a short text or number", "e.g. id: capital")
    where = f"{where} (id `{pid}`)" if "id" in entry else where
    text, input_text, system = (_text_field(entry, k, where) for k in ("prompt", "input", "system"))
    if "messages" in entry:
        if text is not None or input_text is not None:
            raise KieloError(f"{where}: give either `prompt` or `messages`, not both", "keep one of them")
        messages = _messages(entry["messages"], where)
    elif text is None or not text.strip():
        raise KieloError(f"{where}: the prompt has no text", "add `prompt: ...` (or `messages: [...]`)")
    else:
        messages = [{"role": "user", "content": user_prompt(text, input_text)}]
    if system:
        messages = [{"role": "system", "content": system}, *[m for m in messages if m["role"] != "system"]]
    return Prompt(str(pid), messages, where, {k: entry[k] for k in extra_keys if k in entry})


def check_unique_ids(prompts: list[Prompt]) -> list[Prompt]:
    """Ids name prompts in reports and across runs, so each must be unique."""
    seen: dict[str, str] = {}
    for p in prompts:
        if p.id in seen:
            raise KieloError(f"prompt id `{p.id}` is used twice ({seen[p.id]} and {p.source})", "give each prompt its own id")
        seen[p.id] = p.source
    return prompts


def _from_text(path: Path) -> list[Prompt]:
    lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    blank_separated = "\n\n" in "\n".join(line.strip() for line in lines).strip()
    blocks: list[tuple[int, list[str]]] = []  # (first line number, lines)
    current: list[str] | None = None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            current = None
        elif current is None or not blank_separated:
            current = [line]
            blocks.append((n, current))
        else:
            current.append(line)
    return [Prompt(str(i), [{"role": "user", "content": "\n".join(b).strip()}], f"{path}:{n}") for i, (n, b) in enumerate(blocks, 1)]


def read_yaml_file(path: Path) -> Any:
    """A YAML (or JSON) file's data, with syntax errors that name the file and line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise KieloError(
            f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})",
            "fix the syntax there (quote text that contains `: ` or starts with a symbol)",
        ) from None


def prompt_entries(data: Any, path: Path, allowed_top: tuple[str, ...] = ("prompts",)) -> list:
    """The list of prompt entries of a YAML file: the file itself, or its ``prompts:`` key."""
    if isinstance(data, dict):
        for key in data:
            if key not in allowed_top:
                raise KieloError(f"{path}: unknown top-level key `{key}`", suggest(str(key), allowed_top))
        data = data.get("prompts")
    if not isinstance(data, list) or not data:
        raise KieloError(f"{path}: holds no prompts", "write a list of prompts, or `prompts:` followed by the list")
    return data


def _from_yaml(path: Path) -> list[Prompt]:
    # A suite used as a plain prompt file: its expectations are accepted and not checked (that is --suite).
    entries = prompt_entries(read_yaml_file(path), path, ("prompts", "defaults", "name", "description"))
    return [prompt_from_entry(e, f"{path}: prompt {i}", str(i), extra_keys=("expect",)) for i, e in enumerate(entries, 1)]


def _from_jsonl(path: Path) -> list[Prompt]:
    prompts = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise KieloError(f"{where}: malformed JSON ({e.msg} at column {e.colno})", "fix or remove that line") from None
            if isinstance(row, dict) and "prompt" not in row and "messages" not in row:
                if "instruction" not in row:
                    raise KieloError(
                        f"{where}: no `prompt`, `instruction` or `messages`", 'write {"prompt": "..."} or an alpaca/chat data row'
                    )
                row = {
                    "prompt": row["instruction"],
                    "input": row.get("input") or None,
                    "system": row.get("system"),
                    **({"id": row["id"]} if "id" in row else {}),
                }
            elif isinstance(row, dict):
                row = {k: v for k, v in row.items() if k in PROMPT_KEYS}  # data rows carry task, labels, ...
            prompts.append(prompt_from_entry(row, where, str(len(prompts) + 1)))
    return prompts


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Read the prompts of a ``.txt``, ``.yaml``/``.yml``/``.json`` or ``.jsonl`` file (see the module doc)."""
    p = locate(path)
    if not p.is_file():
        raise KieloError(f"prompt file {p} does not exist", "check the path given to --file")
    suffix = p.suffix.lower()
    readers = {".txt": _from_text, ".yaml": _from_yaml, ".yml": _from_yaml, ".json": _from_yaml, ".jsonl": _from_jsonl}
    if suffix not in readers:
        raise KieloError(f"{p}: unsupported prompt file type {suffix or '(none)'}", f"use one of {', '.join(FILE_TYPES)}")
    prompts = readers[suffix](p)
    if not prompts:
        raise KieloError(f"{p} holds no prompts", "add at least one prompt")
    return check_unique_ids(prompts)
