"""Read instruction data files and normalize every row to a list of chat messages.

Two row styles are detected per row:
- alpaca: ``instruction`` (required), ``input`` (optional), ``output`` (required), optional ``system``;
- chat: ``messages``: a list of ``{"role": "system"|"user"|"assistant", "content": str}``.
Extra keys (task type, expected language, references) are kept as ``meta`` for evaluation.
Every problem is reported with the file, the line (or row) and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kielo.errors import KieloError
from kielo.resources import locate

ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Example:
    """One training example: chat messages plus whatever else the row carried."""

    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line", for error messages and reports

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the last assistant turn (what a model is asked at inference)."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        """The last assistant turn: the reference answer."""
        return self.messages[-1]["content"]


def _fail(where: str, what: str, fix: str) -> KieloError:
    return KieloError(f"{where}: {what}", fix)


def row_to_example(row: Any, where: str, system_prompt: str | None = None) -> Example:
    """Normalize one parsed row (alpaca or chat style) to an :class:`Example`."""
    if not isinstance(row, dict):
        raise _fail(where, f"expected a JSON object, got {type(row).__name__}", "write one object per line")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise _fail(where, "`messages` must be a non-empty list", 'use [{"role": "user", "content": "..."}, ...]')
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise _fail(where, f"message {i} needs `role` and `content`", 'use {"role": "user", "content": "..."}')
            if m["role"] not in ROLES:
                raise _fail(where, f"message {i} has role {m['role']!r}", f"use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise _fail(where, f"message {i} content is not a string", "give the content as text")
            clean.append({"role": m["role"], "content": m["content"]})
        if clean[-1]["role"] != "assistant":
            raise _fail(where, "the last message is not from the assistant", "end each conversation with the answer")
        if not any(m["role"] == "user" for m in clean):
            raise _fail(where, "the conversation has no user message", "add the user's request")
        meta = {k: v for k, v in row.items() if k != "messages"}
    else:
        missing = [k for k in ("instruction", "output") if k not in row]
        if missing:
            keys = ", ".join(sorted(row)) or "none"
            raise _fail(
                where,
                f"missing field(s) {', '.join(missing)} (row has: {keys})",
                "use alpaca style {instruction, input, output} or chat style {messages: [...]}",
            )
        for k in ("instruction", "input", "output", "system"):
            if k in row and row[k] is not None and not isinstance(row[k], str):
                raise _fail(where, f"field `{k}` is not a string", f"give `{k}` as text")
        user = row["instruction"]
        if row.get("input"):
            user = f"{user}\n\n{row['input']}"
        clean = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        if row.get("system"):
            clean.insert(0, {"role": "system", "content": row["system"]})
        meta = {k: v for k, v in row.items() if k not in ("instruction", "output", "system")}
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt})
    return Example(messages=clean, meta=meta, source=where)


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise _fail(f"{path}:{n}", f"malformed JSON ({e.msg} at column {e.colno})", "fix or remove that line") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise _fail(f"{path}:{e.lineno}", f"malformed JSON ({e.msg})", "fix the JSON syntax there") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise _fail(str(path), "expected a list of examples", "write a JSON array, or use JSONL")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    if suffix == ".csv":
        import csv

        with path.open(encoding="utf-8", newline="") as fh:
            return [(f"{path}:{i + 2}", dict(r)) for i, r in enumerate(csv.DictReader(fh))]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise KieloError(f"{path}: reading Parquet needs pyarrow", "pip install pyarrow, or convert to JSONL") from None
        return [(f"{path}[row {i}]", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    raise _fail(str(path), f"unsupported file type {suffix or '(none)'}", f"use one of {', '.join(SUFFIXES)}")


def load_examples(
    path: str | Path, system_prompt: str | None = None, *, prepare=None, given_with: str = "data.train / data.validation / DATA_FILE"
) -> list[Example]:
    """Read and validate every row of a data file.

    ``prepare`` may complete a row before it is validated (evaluation accepts prompts without answers);
    ``given_with`` names where the path came from, for the fix in the error messages.
    """
    p = locate(path)
    if not p.exists():
        raise KieloError(f"data file {p} does not exist", f"check the path given with {given_with}")
    if p.is_dir():
        raise KieloError(f"{p} is a folder, not a data file", f"point {given_with} to a file ending in {', '.join(SUFFIXES)}")
    examples = [row_to_example(prepare(row) if prepare else row, where, system_prompt) for where, row in _read_rows(p)]
    if not examples:
        raise KieloError(f"{p} holds no examples", "add at least one example row")
    return examples
