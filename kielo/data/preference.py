"""Read preference data: rows with a prompt, a chosen and a rejected answer.

Three row styles, TRL's preference formats plus kielo's alpaca style, detected per row:
- standard: ``{"prompt": str, "chosen": str, "rejected": str}`` (optional ``system``);
- conversational: ``prompt`` a list of messages, ``chosen`` and ``rejected`` lists ending with one assistant
  message; or, without ``prompt``, two whole conversations that differ only in their last (assistant) message;
- alpaca: ``instruction``, ``input`` (optional), ``system`` (optional), ``chosen``, ``rejected``.
Other keys (``id``, ``task``, ``answer_lang``, ``rejected_kind``, ...) are kept as ``meta``. Each problem names
the file and the row, as :mod:`kielo.data.records` does for instruction data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kielo.data.records import Example, read_rows, row_to_example
from kielo.errors import KieloError

PAIR_KEYS = ("chosen", "rejected")
PROMPT_KEYS = ("prompt", "instruction", "input", "system")
SFT_FIX = "set training.objective sft, or give rows with `chosen` and `rejected` answers (see the README's preference data)"


@dataclass
class PreferenceExample:
    """One preference pair: the prompt as chat messages and the two answers to it."""

    prompt_messages: list[dict[str, str]]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line"

    def example(self, side: str) -> Example:
        """The conversation ending in the ``side`` ("chosen" or "rejected") answer, as an SFT example."""
        answer = self.chosen if side == "chosen" else self.rejected
        return Example([*self.prompt_messages, {"role": "assistant", "content": answer}], dict(self.meta), self.source)


def is_preference_row(row: Any) -> bool:
    """Whether a parsed row is a preference pair (has ``chosen`` or ``rejected``)."""
    return isinstance(row, dict) and any(k in row for k in PAIR_KEYS)


def _fail(where: str, what: str, fix: str) -> KieloError:
    return KieloError(f"{where}: {what}", fix)


def _answer(value: Any, key: str, where: str) -> tuple[list[dict[str, str]], str]:
    """(messages before the answer, answer text) of a ``chosen``/``rejected`` value: text or a message list."""
    if isinstance(value, str):
        return [], value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        last = value[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise _fail(
                where,
                f"`{key}`'s last message is not an assistant message with text content",
                'end it with {"role": "assistant", "content": "..."}',
            )
        return [dict(m) for m in value[:-1]], last["content"]
    raise _fail(
        where,
        f"`{key}` must be text or a list of messages ending with the assistant's answer",
        f'write `{key}` as "..." or [{{"role": "assistant", "content": "..."}}]',
    )


def _prompt(row: dict, where: str) -> list[dict[str, str]]:
    """The prompt of a row as messages (validated like an SFT row's)."""
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            messages = [dict(m) if isinstance(m, dict) else m for m in prompt]
        else:
            raise _fail(
                where, "`prompt` must be text or a list of messages", 'write `prompt` as "..." or [{"role": "user", "content": "..."}]'
            )
        if row.get("system") and not (messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
        return messages
    if "instruction" in row:
        # Alpaca style: records' own rules (instruction required, input optional, system optional).
        probe = row_to_example({k: row[k] for k in ("instruction", "input", "system") if k in row} | {"output": "x"}, where)
        return probe.prompt_messages
    return []


def row_to_pair(row: Any, where: str, system_prompt: str | None = None) -> PreferenceExample:
    """Normalize one parsed row to a :class:`PreferenceExample`; a row that is not a usable pair is an error."""
    if not isinstance(row, dict):
        raise _fail(where, f"expected a JSON object, got {type(row).__name__}", "write one object per line")
    missing = [k for k in PAIR_KEYS if k not in row or row[k] is None]
    if missing:
        keys = ", ".join(sorted(row)) or "none"
        if "output" in row or "messages" in row:
            has = "`output`" if "output" in row else "`messages`"
            lacks = " or ".join(f"`{k}`" for k in missing)
            what = f"an SFT row (has {has}, no {lacks}): preference training needs a chosen and a rejected answer (row has: {keys})"
            raise _fail(where, what, SFT_FIX)
        raise _fail(
            where, f"missing field(s) {', '.join(missing)} (row has: {keys})", "give each row a `chosen` and a `rejected` answer"
        )
    before_c, chosen = _answer(row["chosen"], "chosen", where)
    before_r, rejected = _answer(row["rejected"], "rejected", where)
    prompt = _prompt(row, where)
    if before_c != before_r:
        raise _fail(
            where,
            "`chosen` and `rejected` hold different conversations before their answers",
            "give both the same prompt (or put it in `prompt`)",
        )
    prompt = prompt + before_c
    if not prompt:
        raise _fail(
            where,
            "no prompt: the row has no `prompt` or `instruction`",
            "add the prompt as `prompt` (text or messages) or `instruction`",
        )
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise _fail(where, f"`{key}` is empty: there is no answer to compare", "write the answer, or drop that row")
    if chosen.strip() == rejected.strip():
        raise _fail(
            where,
            "`chosen` and `rejected` are the same answer: the pair prefers nothing",
            "make the rejected answer a worse one, or drop that row",
        )
    # Validate the conversation with the SFT rules (roles, content types, a user turn, system prompt).
    checked = row_to_example({"messages": [*prompt, {"role": "assistant", "content": chosen}]}, where, system_prompt)
    meta = {k: v for k, v in row.items() if k not in (*PAIR_KEYS, *PROMPT_KEYS)}
    return PreferenceExample(checked.prompt_messages, chosen, rejected, meta, where)


def load_pairs(
    path: str | Path, system_prompt: str | None = None, given_with: str = "data.train / data.validation"
) -> list[PreferenceExample]:
    """Read and validate every row of a preference data file."""
    p, rows = read_rows(path, given_with)
    pairs = [row_to_pair(row, where, system_prompt) for where, row in rows]
    if not pairs:
        raise KieloError(f"{p} holds no preference pairs", "add at least one row with `chosen` and `rejected`")
    return pairs
