"""Evaluation data: the training formats, plus rows without a reference answer, and a task-stratified subset.

A data set without references is accepted in two shapes: rows whose answer is empty (``"output": ""`` or
an empty last assistant turn), and prompts only (alpaca rows without ``output``; chat rows that end with
the user's turn). Such rows are generated on and scored by the checks that need no reference (end token,
language, repetition, format constraints); the loss and reference metrics skip them, with a note.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from kielo.data.records import Example, load_examples
from kielo.evaluate.answer_lang import expected_answer_language

NO_TASK = "other"


def _with_empty_answer(row):
    """A prompts-only row completed with an empty answer, so the one row parser validates it."""
    if not isinstance(row, dict):
        return row  # row_to_example reports it
    if "messages" in row:
        msgs = row["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "user":
            return {**row, "messages": [*msgs, {"role": "assistant", "content": ""}]}
        return row
    if "instruction" in row and row.get("output") is None:
        return {**row, "output": ""}
    return row


def load_eval_examples(path: str | Path, system_prompt: str | None = None) -> list[Example]:
    """Read an evaluation file: any training-format row, or a prompt without an answer (the data package's
    one reader and row parser, so every other row problem gets the same message as in training)."""
    return load_examples(path, system_prompt, prepare=_with_empty_answer, require_answer=False, given_with="--data")


def has_reference(example: Example) -> bool:
    """Whether the example carries a reference answer to score against."""
    return bool(example.reference.strip())


def task_of(example: Example) -> str:
    """The row's task type (``meta["task"]``), or ``"other"``."""
    task = example.meta.get("task")
    return str(task) if task else NO_TASK


def last_user_turn(example: Example) -> str:
    """The text of the example's last user turn (the instruction, with its input)."""
    return next((msg["content"] for msg in reversed(example.prompt_messages) if msg["role"] == "user"), "")


def expected_language(example: Example) -> str | None:
    """The language the answer should be in (the row's ``answer_lang``, or a translation's target); None
    when the row doesn't tell, and the row is left out of the language share."""
    return expected_answer_language(example.meta, last_user_turn(example))


def stratified_subset(examples: list[Example], n: int | None) -> list[int]:
    """Indices of ``n`` examples spread evenly over task types (all when ``n`` is None or too large).

    Tasks take turns in order of first appearance, each giving its next example in file order, so the
    subset is deterministic and every task is represented once ``n`` reaches the number of tasks.
    """
    if n is None or n >= len(examples):
        return list(range(len(examples)))
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_task[task_of(ex)].append(i)
    queues = list(by_task.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)
