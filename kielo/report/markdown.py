"""A :class:`~kielo.report.blocks.Report` as GitHub-flavoured Markdown."""

from __future__ import annotations

from kielo.report.blocks import (
    Block,
    Bullets,
    Callout,
    Checks,
    Examples,
    Figure,
    KeyValues,
    Paragraph,
    RawHtml,
    Report,
    Section,
    Table,
    shown,
)

_ALIGN = {"left": ":---", "right": "---:", "": "---"}


def cell(text: str) -> str:
    """A table cell on one line: backslashes and pipes escaped, line breaks as ``<br>``."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def table(t: Table, level: int = 3) -> str:
    """A table with its title as a heading of ``level``, caption above, notes below."""
    parts = [f"{'#' * level} {t.title}"] if t.title else []
    if t.caption:
        parts.append(t.caption)
    lines = ["| " + " | ".join(cell(h) for h in t.columns) + " |"]
    lines.append("|" + "".join(f"{_ALIGN[a]}|" for a in (t.align or [""] * len(t.columns))))
    for i, row in enumerate(t.text_rows()):
        cells = [f"{c} ({t.mark(i, j)})" if t.mark(i, j) else c for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    footer = t.footer_text()
    if footer is not None:
        lines.append("| " + " | ".join(f"**{cell(c)}**" for c in footer) + " |")
    parts.append("\n".join(lines))
    parts += [f"_{n}_" for n in t.notes]
    return "\n\n".join(parts)


def _short(text: str | None, n: int, missing: str = "—") -> str:
    if text is None:
        return missing
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _examples(b: Examples) -> str:
    if not b.examples:
        return b.empty
    lines = []
    for e in b.examples:
        lines.append(f"- **{e.title}**" + (f" ({e.meta})" if e.meta else ""))
        lines += [f"  - {s.label}: {_short(s.text, b.short)}" for s in e.texts]
    return "\n".join(lines)


def block(b: Block, level: int, figures: str) -> str:
    """One block; ``level`` is the heading level of a section here, ``figures`` the PNG folder."""
    if isinstance(b, Section):
        inner = [block(x, level + 1, figures) for x in shown(b.blocks, "markdown")]
        return "\n\n".join([f"{'#' * level} {b.heading}", *[x for x in inner if x]])
    if isinstance(b, Table):
        return table(b, level)
    if isinstance(b, Checks):
        return table(b.table(), level)
    if isinstance(b, Figure):
        return f"![{b.alt or b.name}]({figures}/{b.name}.png)"
    if isinstance(b, Paragraph):
        return b.text
    if isinstance(b, Bullets):
        return "\n".join(f"- {x}" for x in b.items)
    if isinstance(b, KeyValues):
        return "\n".join(f"- {k}: {v}" for k, v in b.items)
    if isinstance(b, Callout):
        return f"> {'⚠ ' if b.kind == 'warn' else ''}{b.text}"
    if isinstance(b, Examples):
        return _examples(b)
    if isinstance(b, RawHtml):
        return f"```\n{b.text}\n```" if b.text else ""
    raise TypeError(f"no Markdown for {type(b).__name__}")


def render(report: Report, figures: str = "plots") -> str:
    """The whole report; figures are linked as ``<figures>/<name>.png`` (relative to the Markdown file)."""
    parts = [f"# {report.title}"] + [block(b, 2, figures) for b in shown(report.blocks, "markdown")]
    return "\n\n".join(p for p in parts if p) + "\n"
