"""A :class:`~kielo.report.blocks.Report` as JSON: the rendered document (every table's cells as shown)
beside the report's machine-readable ``data``."""

from __future__ import annotations

import json
from pathlib import Path

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

DOCUMENT_KEY = "document"  # where the rendered document sits in a report's JSON file


def table(t: Table) -> dict:
    """A table's cells as shown (the same strings Markdown and HTML show)."""
    out: dict = {"type": "table", "title": t.title, "columns": list(t.columns), "rows": t.text_rows()}
    if any(any(m) for m in t.marks):
        out["marks"] = [[t.mark(i, j) for j in range(len(t.columns))] for i in range(len(t.rows))]
    for key, value in (("caption", t.caption), ("notes", t.notes), ("footer", t.footer_text())):
        if value:
            out[key] = value
    return out


def block(b: Block, figures: str = "plots") -> dict:
    """One block as a JSON-ready dict with a ``type``."""
    if isinstance(b, Section):
        return {"type": "section", "heading": b.heading, "blocks": [block(x, figures) for x in shown(b.blocks, "json")]}
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Checks):
        return {"type": "checks", "title": b.title, "checks": [vars(c).copy() for c in b.checks]}
    if isinstance(b, Figure):
        return {"type": "figure", "name": b.name, "file": f"{figures}/{b.name}.png"}
    if isinstance(b, Paragraph):
        return {"type": "paragraph", "text": b.text}
    if isinstance(b, Bullets):
        return {"type": "list", "items": list(b.items)}
    if isinstance(b, KeyValues):
        return {"type": "facts", "items": {k: v for k, v in b.items}}
    if isinstance(b, Callout):
        return {"type": "callout", "kind": b.kind, "text": b.text}
    if isinstance(b, Examples):
        return {
            "type": "examples",
            "examples": [
                {"title": e.title, "meta": e.meta, "texts": [{"label": s.label, "text": s.text, "meta": s.meta} for s in e.texts]}
                for e in b.examples
            ],
        }
    if isinstance(b, RawHtml):
        return {"type": "text", "text": b.text}
    raise TypeError(f"no JSON for {type(b).__name__}")


def document(report: Report, figures: str = "plots") -> dict:
    """The rendered document alone."""
    return {"title": report.title, "blocks": [block(b, figures) for b in shown(report.blocks, "json")]}


def render(report: Report, figures: str = "plots") -> dict:
    """What a report's JSON file holds: its ``data`` with the document under :data:`DOCUMENT_KEY`."""
    data = dict(report.data or {})
    if DOCUMENT_KEY in data:
        raise ValueError(f"a report's data may not use the key {DOCUMENT_KEY!r}")
    data[DOCUMENT_KEY] = document(report, figures)
    return data


def _strict(x):
    # numpy scalars (counts and percentiles from numpy) are plain numbers in JSON.
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _lenient(x):
    try:
        return _strict(x)
    except TypeError:
        return str(x)


def dumps(obj, indent: int = 1, lenient: bool = False) -> str:
    """JSON as kielo writes it: UTF-8 text (no ``\\u`` escapes), numpy scalars as numbers, paths as text;
    ``lenient`` writes any other object as its ``str`` instead of raising."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=_lenient if lenient else _strict)


def write_json(obj, path: Path, indent: int = 1, lenient: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` (folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj, indent, lenient) + "\n", encoding="utf-8")
    return path
