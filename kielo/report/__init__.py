"""One report kit: typed pieces (:mod:`kielo.report.blocks`) and their renderers to Markdown, self-contained
HTML, JSON and terminal text. A new report is a function that builds a :class:`Report`."""

from kielo.report.blocks import (
    Block,
    Bullets,
    Callout,
    Check,
    Checks,
    Example,
    Examples,
    Figure,
    KeyValues,
    Paragraph,
    RawHtml,
    Report,
    Section,
    Shown,
    Table,
)

__all__ = [
    "Block",
    "Bullets",
    "Callout",
    "Check",
    "Checks",
    "Example",
    "Examples",
    "Figure",
    "KeyValues",
    "Paragraph",
    "RawHtml",
    "Report",
    "Section",
    "Shown",
    "Table",
]
