"""Read instruction data files and normalize every row to a list of chat messages.

Three row styles are detected per row:
- alpaca: ``instruction`` (required), ``input`` (optional), ``output`` (required), optional ``system``;
- chat: ``messages``: a list of ``{"role": "system"|"user"|"assistant", "content": str}``;
- ShareGPT: ``conversations``: a list of ``{"from": "human"|"gpt"|"system", "value": str}``.
Extra keys (task type, expected language, references) are kept as ``meta`` for evaluation.
Every problem is reported with the file, the line (or row) and what is wrong. Text files are read as UTF-8,
with or without a byte-order mark (editors on Windows write one).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kielo.data.sources import SUFFIXES
from kielo.errors import KieloError
from kielo.resources import locate

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names (some exports write the chat roles instead) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


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


def _check_answers(messages: list[dict[str, str]], where: str, chat: bool) -> None:
    """Refuse assistant turns that are empty: training on them teaches the model to stop at once."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            if chat:
                raise _fail(
                    where, f"message {i} (assistant) is empty: there is no answer to train on", "write the answer, or drop that row"
                )
            raise _fail(where, "`output` is empty: there is no answer to train on", "write the answer, or drop that row")


def _sharegpt_to_chat(row: dict, where: str) -> dict:
    """A ShareGPT row as a chat row: ``from``/``value`` turns become ``role``/``content`` messages."""
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _fail(where, "`conversations` must be a non-empty list", 'use [{"from": "human", "value": "..."}, ...]')
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise _fail(where, f"conversation turn {i} needs `from` and `value`", 'use {"from": "human", "value": "..."}')
        if t["from"] not in SHAREGPT_ROLES:
            raise _fail(where, f"conversation turn {i} is from {t['from']!r}", "use human, gpt or system")
        messages.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return {"messages": messages, **{k: v for k, v in row.items() if k != "conversations"}}


def row_to_example(row: Any, where: str, system_prompt: str | None = None, require_answer: bool = True) -> Example:
    """Normalize one parsed row (alpaca, chat or ShareGPT style) to an :class:`Example`.

    With ``require_answer`` (training) an empty or missing answer is an error; without it (evaluation prompts,
    data analysis, which reports empty fields) ``"output": null`` reads as an empty answer.
    """
    if not isinstance(row, dict):
        raise _fail(where, f"expected a JSON object, got {type(row).__name__}", "write one object per line")
    if "conversations" in row and "messages" not in row:
        row = _sharegpt_to_chat(row, where)
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
        if require_answer:
            _check_answers(clean, where, chat=True)
        meta = {k: v for k, v in row.items() if k != "messages"}
    else:
        missing = [k for k in ("instruction", "output") if k not in row]
        if missing and any(k in row for k in ("chosen", "rejected")):
            keys = ", ".join(sorted(row))
            raise _fail(
                where,
                f"a preference row (has chosen/rejected, no {', '.join(missing)}): SFT trains on one `output` (row has: {keys})",
                "set training.objective dpo, orpo or simpo for preference data, or give SFT rows with `output` (or `messages`)",
            )
        if missing:
            keys = ", ".join(sorted(row)) or "none"
            raise _fail(
                where,
                f"missing field(s) {', '.join(missing)} (row has: {keys})",
                "use alpaca style {instruction, input, output}, chat style {messages: [...]} or ShareGPT "
                "{conversations: [...]}; map other column names with data.columns",
            )
        for k in ("instruction", "input", "output", "system"):
            if k in row and row[k] is not None and not isinstance(row[k], str):
                raise _fail(where, f"field `{k}` is not a string", f"give `{k}` as text")
        if row["instruction"] is None:
            raise _fail(where, "`instruction` is null", "write the instruction as text")
        if row["output"] is None:
            if require_answer:
                raise _fail(where, "`output` is null: there is no answer to train on", "write the answer, or drop that row")
            row = {**row, "output": ""}
        user = row["instruction"]
        if row.get("input"):
            user = f"{user}\n\n{row['input']}"
        clean = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        if row.get("system"):
            clean.insert(0, {"role": "system", "content": row["system"]})
        meta = {k: v for k, v in row.items() if k not in ("instruction", "output", "system")}
        if require_answer:
            _check_answers(clean, where, chat=False)
    if system_prompt and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system_prompt})
    return Example(messages=clean, meta=meta, source=where)


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped; bytes that are not UTF-8 are an error
    naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(
            f"{path}:{line}",
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or fix that line",
        ) from None


def _read_csv(path: Path, text: str) -> list[tuple[str, Any]]:
    import csv

    rows = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    start = reader.line_num + 1  # a quoted field may span lines: name the line where the record starts
    for record in reader:
        where = f"{path}:{start}"
        if None in record:  # more fields than the header
            raise _fail(
                where,
                f"{len(header) + len(record[None])} fields, the header has {len(header)}",
                'quote fields that hold commas ("a, b")',
            )
        short = [k for k, v in record.items() if v is None]
        if short:
            raise _fail(
                where,
                f"the row ends before field(s) {', '.join(short)}: a quote left open swallows the lines after it",
                'close the quote; a quote inside a quoted field is written twice ("")',
            )
        rows.append((where, record))
        start = reader.line_num + 1
    return rows


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line breaks of Unicode.
        for n, line in enumerate(_read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise _fail(f"{path}:{n}", f"malformed JSON ({e.msg} at column {e.colno})", "fix or remove that line") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise _fail(f"{path}:{e.lineno}", f"malformed JSON ({e.msg})", "fix the JSON syntax there") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise _fail(str(path), "expected a list of examples", "write a JSON array, or use JSONL")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    if suffix == ".csv":
        return _read_csv(path, _read_text(path))
    if suffix == ".parquet":
        try:
            import pyarrow
            import pyarrow.parquet as pq
        except ImportError:
            raise KieloError(f"{path}: reading Parquet needs pyarrow", "pip install 'kielo[parquet]', or convert to JSONL") from None
        try:
            table = pq.read_table(path)
        except pyarrow.ArrowException as e:
            raise _fail(str(path), f"not a readable Parquet file ({str(e)[:200]})", "write it again, or convert it to JSONL") from None
        return [(f"{path}[row {i}]", r) for i, r in enumerate(table.to_pylist())]
    raise _fail(str(path), f"unsupported file type {suffix or '(none)'}", f"use one of {', '.join(SUFFIXES)}")


def read_rows(path: str | Path, given_with: str = "data.train / data.validation / DATA_FILE") -> tuple[Path, list[tuple[str, Any]]]:
    """The located file and its parsed rows as ``(where, row)``; a missing file or a folder is an error naming
    ``given_with`` (where the path came from)."""
    p = locate(path)
    if not p.exists():
        raise KieloError(f"data file {p} does not exist", f"check the path given with {given_with}")
    if p.is_dir():
        raise KieloError(f"{p} is a folder, not a data file", f"point {given_with} to a file ending in {', '.join(SUFFIXES)}")
    return p, _read_rows(p)


def load_examples(
    path: str | Path,
    system_prompt: str | None = None,
    *,
    prepare=None,
    require_answer: bool = True,
    given_with: str = "data.train / data.validation / DATA_FILE",
    options=None,
) -> list[Example]:
    """Read and validate every row of a data file, a save_to_disk folder or a hub dataset.

    ``prepare`` may complete a row before it is validated; ``require_answer=False`` accepts rows whose answer
    is empty (evaluation prompts, data analysis); ``given_with`` names where the path came from, for the fix
    in the error messages; ``options`` (:class:`kielo.data.sources.ReadOptions`) give a hub set's split,
    subset and revision and the column names to map.
    """
    from kielo.data.sources import ReadOptions, dataset_rows, rename_columns, resolve_source

    options = options or ReadOptions()
    source = resolve_source(path, options, given_with)
    rows = _read_rows(Path(source.location)) if source.kind == "file" else dataset_rows(source, options)
    examples = []
    for where, row in rows:
        row = rename_columns(row, options.columns)
        examples.append(row_to_example(prepare(row) if prepare else row, where, system_prompt, require_answer))
    if not examples:
        raise KieloError(f"{source.location} holds no examples", "add at least one example row")
    return examples
