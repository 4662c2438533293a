"""What a report is made of: typed pieces that every renderer (Markdown, HTML, JSON, terminal) understands.

A report is data first: builders in analyze, evaluate, prompt, merge and the demo return these objects and
never format a table themselves, so every output of one report shows the same cells. Prose (paragraphs,
list items) may use two inline marks, ``code`` in backticks and **bold**; table cells are shown as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Cell = str | int | float | None


@dataclass(kw_only=True)
class Block:
    """Base of every piece. ``only``: ``"markdown"``/``"html"``/``"json"``/``"text"`` limits it to that output."""

    only: str = ""


@dataclass
class Table(Block):
    """A table: ``columns`` and ``rows`` of cells, with an optional title, caption and notes under it.

    Cells are text or numbers; a number is shown with its column's format spec from ``formats`` (keyed by
    column name, e.g. ``{"loss": ".4f"}``), ``None`` as ``missing``. ``marks`` (parallel to ``rows``, per
    cell ``"better"``/``"worse"``/``""``) is a verdict shown beside the cell; ``footer`` is a total row.
    ``align``: ``"left"``/``"right"`` per column (Markdown and HTML). ``wrap`` names columns of long text
    (answers, prompts): HTML keeps their line breaks and wraps them inside the cell, however long a word.
    A row of the wrong length raises.
    """

    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    title: str = ""
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    marks: list[list[str]] = field(default_factory=list)
    footer: list[Cell] | None = None
    align: list[str] | None = None
    missing: str = "—"
    wrap: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.check()

    def add(self, row: list[Cell], marks: list[str] | None = None) -> None:
        """Append a row (and its verdict marks), checking its length."""
        self._check_row(row, "row")
        if marks is not None or self.marks:
            self.marks += [[""] * len(self.columns) for _ in range(len(self.rows) - len(self.marks))]
            self.marks.append(marks or [""] * len(self.columns))
            self._check_row(self.marks[-1], "marks of a row")
        self.rows.append(row)

    def _check_row(self, row: list, what: str) -> None:
        if len(row) != len(self.columns):
            raise ValueError(
                f"table {self.title or self.columns!r}: a {what} has {len(row)} cells for {len(self.columns)} columns: {row!r}"
            )

    def check(self) -> None:
        """Raise ``ValueError`` when a row, a row's marks, the footer or ``align`` do not fit the columns."""
        for row in self.rows:
            self._check_row(row, "row")
        for marks in self.marks:
            self._check_row(marks, "marks of a row")
        if self.footer is not None:
            self._check_row(self.footer, "footer")
        if self.align is not None:
            self._check_row(self.align, "align")
        for what, names in (("formats", self.formats), ("wrap", self.wrap)):
            unknown = set(names) - set(self.columns)
            if unknown:
                raise ValueError(f"table {self.title!r}: {what} for unknown columns {sorted(unknown)}")

    def cell(self, value: Cell, column: int) -> str:
        """A cell as shown: numbers in their column's format."""
        if value is None:
            return self.missing
        spec = self.formats.get(self.columns[column])
        if spec is not None and isinstance(value, int | float) and not isinstance(value, bool):
            return format(value, spec)
        return str(value)

    def text_rows(self) -> list[list[str]]:
        """Every row as shown (numbers formatted), without marks."""
        self.check()
        return [[self.cell(v, j) for j, v in enumerate(row)] for row in self.rows]

    def mark(self, i: int, j: int) -> str:
        """The verdict mark of cell (``i``, ``j``), ``""`` when none."""
        return self.marks[i][j] if i < len(self.marks) else ""

    def footer_text(self) -> list[str] | None:
        return None if self.footer is None else [self.cell(v, j) for j, v in enumerate(self.footer)]


@dataclass
class Figure(Block):
    """A figure as PNG bytes: written as ``<figures>/<name>.png``, embedded in HTML as base64."""

    name: str
    png: bytes
    alt: str = ""


@dataclass
class Paragraph(Block):
    text: str
    style: str = ""  # "note": smaller, grey


@dataclass
class Bullets(Block):
    items: list[str]


@dataclass
class KeyValues(Block):
    """Facts as ``key: value`` items (settings, sizes, paths)."""

    items: list[tuple[str, str]]


@dataclass
class Callout(Block):
    """A boxed line: ``kind`` ``"warn"`` (a problem to look at) or ``"ok"``."""

    text: str
    kind: str = "warn"


@dataclass
class Check:
    """One bar a result is held to: what was measured, the bar, and whether it passed."""

    name: str
    measured: str
    bar: str
    passed: bool


@dataclass
class Checks(Block):
    """Verdicts against bars, shown as a table with a passed column."""

    checks: list[Check]
    title: str = ""

    def table(self) -> Table:
        """The checks as a table: passed is ``yes``/``NO``."""
        return Table(
            ["check", "measured", "bar", "passed"],
            [[c.name, c.measured, c.bar, "yes" if c.passed else "NO"] for c in self.checks],
            title=self.title,
        )


@dataclass
class Shown:
    """One text of an example (a prompt, a reference, a model's answer) with a line of metrics under it."""

    label: str
    text: str | None
    meta: str = ""


@dataclass
class Example:
    title: str
    meta: str
    texts: list[Shown]


@dataclass
class Examples(Block):
    """Examples side by side (HTML: one row each; Markdown: a list with shortened texts).

    With ``summary`` the HTML version is collapsed under it. Every ``Example`` holds the same labels.
    """

    examples: list[Example]
    summary: str = ""
    empty: str = "none"
    short: int = 160  # characters of each text in Markdown and terminal output

    def labels(self) -> list[str]:
        labels = [s.label for s in self.examples[0].texts] if self.examples else []
        for e in self.examples:
            if [s.label for s in e.texts] != labels:
                raise ValueError(f"example {e.title!r} has texts {[s.label for s in e.texts]}, the others {labels}")
        return labels


@dataclass
class RawHtml(Block):
    """HTML built and escaped by kielo itself (e.g. token-level renderings); ``text`` stands in elsewhere."""

    html: str
    text: str = ""


@dataclass
class Section(Block):
    """A heading and what is under it; sections nest (one heading level deeper)."""

    heading: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Report:
    """A whole report: a title and its blocks. ``data`` is the machine-readable result the JSON file holds
    beside the rendered document; ``css`` is extra style for pieces a report brings (see :class:`RawHtml`)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    data: dict | None = None
    css: str = ""
    nav: bool = True


def shown(blocks: list[Block], output: str) -> list[Block]:
    """The blocks that ``output`` shows."""
    return [b for b in blocks if not b.only or b.only == output]
