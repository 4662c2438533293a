"""A :class:`~kielo.report.blocks.Report` as one self-contained HTML file.

Everything is inside the file (CSS inline, figures as base64 ``data:`` URIs, links only to its own
sections), so it can be mailed or opened offline. Every piece of text is escaped; only :class:`RawHtml`
(built and escaped by kielo) goes in as it is.
"""

from __future__ import annotations

import base64
import re
from html import escape

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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}td.better,tr.pass td{background:#e3f5e1}
td.worse,tr.fail td{background:#fbe3e3}th.right,td.right{text-align:right}tfoot td{font-weight:700}
.caption,.note{color:#555;font-size:.85em;margin:.2em 0}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:.4em .8em;margin:.3em 0}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.4em .8em}
.gen,td.text{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
.gen{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}td.text{min-width:12em;max-width:40em}
table.examples{table-layout:fixed;width:100%}table.examples th:first-child{width:9em}
.meta{color:#666;font-size:.8em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
nav a{margin-right:1em}li{margin:.2em 0}details{margin:.5em 0}
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def prose(text: str) -> str:
    """Escaped text with the two inline marks of prose: ``code`` and **bold**."""
    return _BOLD.sub(r"<b>\1</b>", _CODE.sub(r"<code>\1</code>", escape(text)))


def _cls(align: list[str] | None, j: int, mark: str = "", wrap: bool = False) -> str:
    names = [x for x in (mark, align[j] if align and align[j] == "right" else "", "text" if wrap else "") if x]
    return f' class="{" ".join(names)}"' if names else ""


def table(t: Table, level: int = 3, row_classes: list[str] | None = None) -> str:
    """A table with its title as a heading of ``level``; verdict marks colour their cell."""
    out = [f"<h{level}>{escape(t.title)}</h{level}>"] if t.title else []
    if t.caption:
        out.append(f'<p class="caption">{escape(t.caption)}</p>')
    out.append(
        "<table><thead><tr>"
        + "".join(f"<th{_cls(t.align, j)}>{escape(h)}</th>" for j, h in enumerate(t.columns))
        + "</tr></thead><tbody>"
    )
    wrap = [h in t.wrap for h in t.columns]
    for i, row in enumerate(t.text_rows()):
        cells = []
        for j, c in enumerate(row):
            mark = t.mark(i, j)
            cells.append(f"<td{_cls(t.align, j, mark, wrap[j])}>{escape(c)}{f' <b>({escape(mark)})</b>' if mark else ''}</td>")
        tr = f'<tr class="{row_classes[i]}">' if row_classes else "<tr>"
        out.append(tr + "".join(cells) + "</tr>")
    out.append("</tbody>")
    footer = t.footer_text()
    if footer is not None:
        out.append("<tfoot><tr>" + "".join(f"<td{_cls(t.align, j)}>{escape(c)}</td>" for j, c in enumerate(footer)) + "</tr></tfoot>")
    out.append("</table>")
    out += [f'<p class="note">{escape(n)}</p>' for n in t.notes]
    return "\n".join(out)


def figure(f: Figure) -> str:
    """The figure inline as a base64 PNG."""
    return f'<img alt="{escape(f.alt or f.name)}" src="data:image/png;base64,{base64.b64encode(f.png).decode("ascii")}">'


def _text(text: str | None, missing: str = "—") -> str:
    return f'<div class="gen">{escape(text) if text is not None else missing}</div>'


def _meta(meta: str) -> str:
    return f'<div class="meta">{escape(meta)}</div>' if meta else ""


def examples(b: Examples) -> str:
    """Examples as a table, one row each: the example's title, then each of its texts."""
    if not b.examples:
        return f'<p class="caption">{escape(b.empty)}</p>'
    head = "".join(f"<th>{escape(x)}</th>" for x in ["example", *b.labels()])
    rows = [
        f"<tr><td>{escape(e.title)}{_meta(e.meta)}</td>"
        + "".join(f"<td>{_text(s.text)}{_meta(s.meta)}</td>" for s in e.texts)
        + "</tr>"
        for e in b.examples
    ]
    # A fixed layout shares the page's width between the texts; without it one long answer widens its column
    # past the page and the others shrink to a word each.
    body = f'<table class="examples"><thead><tr>{head}</tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>"
    return f"<details><summary>{escape(b.summary)}</summary>{body}</details>" if b.summary else body


def block(b: Block, level: int) -> str:
    """One block; ``level`` is the heading level of a section here."""
    if isinstance(b, Section):
        anchor = f' id="{escape(b.anchor)}"' if b.anchor else ""
        inner = [block(x, level + 1) for x in shown(b.blocks, "html")]
        return "\n".join([f"<h{level}{anchor}>{escape(b.heading)}</h{level}>", *inner])
    if isinstance(b, Table):
        return table(b, level)
    if isinstance(b, Checks):
        return table(b.table(), level, ["pass" if c.passed else "fail" for c in b.checks])
    if isinstance(b, Figure):
        return figure(b)
    if isinstance(b, Paragraph):
        return f'<p class="{b.style}">{prose(b.text)}</p>' if b.style else f"<p>{prose(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{prose(x)}</li>" for x in b.items) + "</ul>"
    if isinstance(b, KeyValues):
        return "<ul>" + "".join(f"<li>{escape(k)}: {prose(v)}</li>" for k, v in b.items) + "</ul>"
    if isinstance(b, Callout):
        return f'<div class="{"ok" if b.kind == "ok" else "warn"}">{prose(b.text)}</div>'
    if isinstance(b, Examples):
        return examples(b)
    if isinstance(b, RawHtml):
        return b.html
    raise TypeError(f"no HTML for {type(b).__name__}")


def render(report: Report) -> str:
    """The whole report as one HTML document; top-level sections with an anchor get a link in a nav bar."""
    blocks = shown(report.blocks, "html")
    body = [f"<h1>{escape(report.title)}</h1>"]
    links = [b for b in blocks if isinstance(b, Section) and b.anchor]
    for b in blocks:
        if report.nav and links and b is links[0]:
            body.append("<nav>" + "".join(f'<a href="#{escape(s.anchor)}">{escape(s.heading)}</a>' for s in links) + "</nav>")
        body.append(block(b, 2))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(report.title)}</title>'
        f"<style>{CSS}{report.css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
