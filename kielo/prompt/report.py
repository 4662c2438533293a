"""A prompt run as a report: terminal columns, a suite summary, and the JSONL, Markdown and HTML files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kielo.prompt.run import Answer, PromptRun
from kielo.prompt.settings import describe
from kielo.report import Paragraph, Report, Section, Table, html, markdown, text

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


def answers(run: PromptRun) -> Table:
    """The prompts down the left, one column per model."""
    columns = ["prompt", *run.models]
    return Table(columns, _rows(run), wrap=columns)


def answers_table(run: PromptRun, width: int = 120) -> str:
    """The answers side by side in ``width`` terminal columns."""
    return text.wrapped_table(answers(run), width)


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


def summary(run: PromptRun) -> Table:
    """The suite summary: one row per model."""
    return Table(SUMMARY_HEADERS, summary_rows(run))


def summary_table(run: PromptRun) -> str:
    """The suite summary as aligned plain-text columns."""
    return text.table(summary(run), rule="-")


def prompt_report(run: PromptRun, title: str) -> Report:
    """The whole run: settings, suite summary (if any), answers side by side."""
    blocks = [Paragraph(f"Settings: {describe(run.settings)}.")]
    if run.system_prompt:
        blocks.append(Paragraph(f"System prompt: {run.system_prompt}"))
    if run.suite is not None:
        blocks.append(Section("Summary", [summary(run)]))
    blocks.append(Section("Answers", [answers(run)]))
    return Report(title, blocks)


def to_markdown(run: PromptRun, title: str) -> str:
    """The whole run as a Markdown document."""
    return markdown.render(prompt_report(run, title))


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


def write_outputs(run: PromptRun, folder: str | Path, stem: str, title: str) -> tuple[Path, Path, Path]:
    """Write ``<stem>.jsonl``, ``<stem>.md`` and ``<stem>.html`` into ``folder``; returns their paths.

    An earlier call's files are never replaced: the next free ``<stem>-2``, ``<stem>-3``... is used instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, n = stem, 1
    while any((folder / f"{name}{ext}").exists() for ext in (".jsonl", ".md", ".html")):
        n += 1
        name = f"{stem}-{n}"
    jsonl, md, page = folder / f"{name}.jsonl", folder / f"{name}.md", folder / f"{name}.html"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in jsonl_rows(run)), encoding="utf-8")
    report = prompt_report(run, title)
    md.write_text(markdown.render(report), encoding="utf-8")
    page.write_text(html.render(report), encoding="utf-8")
    return jsonl, md, page
