"""A prompt run as text: terminal columns, a suite summary, and the JSONL and Markdown files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kielo.prompt.run import Answer, PromptRun
from kielo.prompt.settings import describe
from kielo.prompt.table import markdown_table, terminal_table

PASS, FAIL = "✓", "✗"


def verdict(answer: Answer) -> str:
    """``✓ pass`` or ``✗`` followed by each failed check and why."""
    failed = [c for c in answer.checks if not c.passed]
    if not failed:
        return f"{PASS} pass"
    return f"{FAIL} " + "; ".join(f"{c.name}: {c.detail}" for c in failed)


def _answer_cell(answer: Answer) -> str:
    cell = answer.text or "(empty)"
    if answer.stop is None and not answer.ended:
        cell += " …"  # cut at max_new_tokens
    return f"{cell}\n{verdict(answer)}" if answer.checks else cell


def _rows(run: PromptRun) -> list[list[str]]:
    return [[f"[{p.id}] {p.text}"] + [_answer_cell(run.answers[m][i]) for m in run.models] for i, p in enumerate(run.prompts)]


def answers_table(run: PromptRun, width: int = 120) -> str:
    """The prompts down the left, one column per model."""
    return terminal_table(["prompt", *run.models], _rows(run), width)


def _failed_checks(answers: list[Answer]) -> str:
    counts = Counter(c.name for a in answers for c in a.checks if not c.passed)
    return ", ".join(f"{name} ×{n}" for name, n in counts.most_common()) or "-"


def summary_rows(run: PromptRun) -> list[list[str]]:
    """Per model: prompts passed, pass rate, failed checks by kind, tokens/s."""
    total = len(run.prompts)
    return [
        [
            m,
            f"{run.passed(m)}/{total}",
            f"{100 * run.pass_rates()[m]:.0f}%",
            _failed_checks(run.answers[m]),
            f"{run.tokens_per_s.get(m, 0):.1f}",
        ]
        for m in run.models
    ]


SUMMARY_HEADERS = ["model", "passed", "pass rate", "failed checks", "tokens/s"]


def summary_table(run: PromptRun) -> str:
    """The suite summary as aligned plain-text columns."""
    rows = [SUMMARY_HEADERS, *summary_rows(run)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(SUMMARY_HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def to_markdown(run: PromptRun, title: str) -> str:
    """The whole run as a Markdown document: settings, suite summary (if any), answers side by side."""
    parts = [f"# {title}", "", f"Settings: {describe(run.settings)}."]
    if run.system_prompt:
        parts.append(f"System prompt: {run.system_prompt}")
    if run.suite is not None:
        parts += ["", "## Summary", "", markdown_table(SUMMARY_HEADERS, summary_rows(run))]
    parts += ["", "## Answers", "", markdown_table(["prompt", *run.models], _rows(run)), ""]
    return "\n".join(parts)


def jsonl_rows(run: PromptRun) -> list[dict]:
    """One row per (prompt, model): the conversation asked, the answer, and the checks."""
    rows = []
    for i, p in enumerate(run.prompts):
        for m in run.models:
            a = run.answers[m][i]
            row = {
                "id": p.id,
                "model": m,
                "messages": p.conversation(run.system_prompt),
                "answer": a.text,
                "tokens": a.tokens,
                "ended": a.ended,
                "stop": a.stop,
            }
            if run.suite is not None:
                row["passed"] = a.passed
                row["checks"] = [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in a.checks]
            rows.append(row)
    return rows


def write_outputs(run: PromptRun, folder: str | Path, stem: str, title: str) -> tuple[Path, Path]:
    """Write ``<stem>.jsonl`` and ``<stem>.md`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jsonl, md = folder / f"{stem}.jsonl", folder / f"{stem}.md"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in jsonl_rows(run)), encoding="utf-8")
    md.write_text(to_markdown(run, title), encoding="utf-8")
    return jsonl, md
