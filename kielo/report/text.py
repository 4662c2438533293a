"""A :class:`~kielo.report.blocks.Report` as plain terminal text: aligned or wrapped side-by-side tables."""

from __future__ import annotations

import textwrap

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


def plain(text: str) -> str:
    """Prose without its **bold** marks (backticks read fine in a terminal)."""
    return text.replace("**", "")


def _cells(t: Table) -> list[list[str]]:
    rows = [[f"{c} ({t.mark(i, j)})" if t.mark(i, j) else c for j, c in enumerate(row)] for i, row in enumerate(t.text_rows())]
    footer = t.footer_text()
    return rows + ([footer] if footer is not None else [])


def table(t: Table, rule: str = "─") -> str:
    """A table as aligned columns: title, header, a rule, the rows, then its notes."""
    rows = _cells(t)
    widths = [max(len(r[j]) for r in [t.columns, *rows]) for j in range(len(t.columns))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if t.align and t.align[j] == "right" else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = ([t.title] if t.title else []) + [line(t.columns), "  ".join(rule * w for w in widths)]
    lines += [line(r) for r in rows] + [f"  ({note})" for note in t.notes]
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    """Wrap each paragraph of ``text`` to ``width``, keeping its own line breaks."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += textwrap.wrap(para, width, break_long_words=True, replace_whitespace=False, drop_whitespace=True) or [""]
    return lines


def column_widths(n: int, total: int, first_share: float = 0.28, minimum: int = 12) -> list[int]:
    """Widths for ``n`` columns in ``total`` characters: the first (e.g. a prompt) narrower, the rest equal."""
    usable = max(total - 3 * (n - 1), n * minimum)  # " │ " between columns
    if n == 1:
        return [usable]
    first = max(minimum, int(usable * first_share))
    rest = max(minimum, (usable - first) // (n - 1))
    return [first] + [rest] * (n - 1)


def wrapped_table(t: Table, width: int = 120) -> str:
    """Columns side by side in ``width`` characters, each cell wrapped to its column, rows separated by rules."""
    widths = column_widths(len(t.columns), width)
    rule = "─┼─".join("─" * w for w in widths)

    def block(cells: list[str]) -> list[str]:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
        height = max(len(w) for w in wrapped)
        return [
            " │ ".join((w[i] if i < len(w) else "").ljust(widths[k]) for k, w in enumerate(wrapped)).rstrip() for i in range(height)
        ]

    out = block(t.columns) + [rule]
    for n, row in enumerate(_cells(t)):
        if n:
            out.append(rule)
        out += block(row)
    return "\n".join(out)


def _short(text: str | None, n: int) -> str:
    text = "—" if text is None else " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def block(b: Block) -> str:
    """One block as text; a section is its heading with its blocks indented under it."""
    if isinstance(b, Section):
        inner = "\n\n".join(x for x in (block(c) for c in shown(b.blocks, "text")) if x)
        return b.heading + ("\n" + textwrap.indent(inner, "  ") if inner else "")
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Checks):
        return table(b.table())
    if isinstance(b, Figure):
        return ""  # figures are files; the report says where
    if isinstance(b, Paragraph):
        return plain(b.text)
    if isinstance(b, Bullets):
        return "\n".join(f"- {plain(x)}" for x in b.items)
    if isinstance(b, KeyValues):
        return "\n".join(f"{k}: {plain(v)}" for k, v in b.items)
    if isinstance(b, Callout):
        return f"! {plain(b.text)}" if b.kind == "warn" else plain(b.text)
    if isinstance(b, Examples):
        lines = [
            f"{e.title}" + (f" ({e.meta})" if e.meta else "") + "".join(f"\n  {s.label}: {_short(s.text, b.short)}" for s in e.texts)
            for e in b.examples
        ]
        return "\n".join(lines) or b.empty
    if isinstance(b, RawHtml):
        return b.text
    raise TypeError(f"no text for {type(b).__name__}")


def render(report: Report, title: bool = True) -> str:
    """The whole report as text, blocks separated by blank lines."""
    parts = ([report.title] if title and report.title else []) + [block(b) for b in shown(report.blocks, "text")]
    return "\n\n".join(p for p in parts if p) + "\n"
