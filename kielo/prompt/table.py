"""Tables of text: side-by-side columns for a terminal, and Markdown for files."""

from __future__ import annotations

import textwrap


def _wrap(text: str, width: int) -> list[str]:
    """Wrap each paragraph of ``text`` to ``width``, keeping the answer's own line breaks."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += textwrap.wrap(para, width, break_long_words=True, replace_whitespace=False, drop_whitespace=True) or [""]
    return lines


def column_widths(n: int, total: int, first_share: float = 0.28, minimum: int = 12) -> list[int]:
    """Widths for ``n`` columns in ``total`` characters: the first (the prompt) narrower, the rest equal."""
    usable = max(total - 3 * (n - 1), n * minimum)  # " │ " between columns
    if n == 1:
        return [usable]
    first = max(minimum, int(usable * first_share))
    rest = max(minimum, (usable - first) // (n - 1))
    return [first] + [rest] * (n - 1)


def terminal_table(headers: list[str], rows: list[list[str]], width: int = 120) -> str:
    """Columns side by side, each cell wrapped to its column, rows separated by rules."""
    widths = column_widths(len(headers), width)
    rule = "─┼─".join("─" * w for w in widths)

    def block(cells: list[str]) -> list[str]:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
        height = max(len(w) for w in wrapped)
        return [
            " │ ".join((w[i] if i < len(w) else "").ljust(widths[k]) for k, w in enumerate(wrapped)).rstrip() for i in range(height)
        ]

    out = block(headers) + [rule]
    for n, row in enumerate(rows):
        if n:
            out.append(rule)
        out += block(row)
    return "\n".join(out)


def _md_cell(text: str) -> str:
    # A table cell is one line: pipes escaped, line breaks as <br>.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
