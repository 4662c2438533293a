"""The report kit: one Report renders to Markdown, HTML, JSON and text with the same cells; HTML is escaped."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from kielo.report import (
    Bullets,
    Callout,
    Check,
    Checks,
    Example,
    Examples,
    KeyValues,
    Paragraph,
    RawHtml,
    Report,
    Section,
    Shown,
    Table,
    data,
    files,
    html,
    markdown,
    text,
)


def sample() -> Report:
    t = Table(["model", "loss", "share"], title="Results", caption="on held-out data", formats={"loss": ".4f", "share": ".1%"})
    t.add(["base", 2.34567, 0.5])
    t.add(["tuned <script>alert(1)</script>", 1.5, None], ["", "better", ""])
    t.footer = ["total", 3.84567, 1.0]
    return Report(
        "Demo & <test>",
        [
            Paragraph("Model `tiny` with **bold** <b>not markup</b>."),
            Section(
                "Held out",
                [
                    t,
                    Checks([Check("loss_reduction", "0.360", ">= 20%", True), Check("ended", "0.500", ">= 90%", False)]),
                    KeyValues([("data", "a | b")]),
                    Bullets(["one", "two"]),
                    Callout("<warn>"),
                    Examples([Example("ex1", "qa", [Shown("prompt", "Mikä <on>?"), Shown("answer", None, "chrF 3")])]),
                ],
                anchor="held",
            ),
            Paragraph("only in Markdown", only="markdown"),
            RawHtml('<span class="tok">x</span>', text="x (as text)"),
        ],
        data={"answer": 42},
    )


CELLS = ["base", "2.3457", "50.0%", "tuned <script>alert(1)</script>", "1.5000", "—", "total", "3.8457", "100.0%"]


def test_the_same_cells_in_every_output():
    report = sample()
    md, page, doc, plain = markdown.render(report), html.render(report), data.render(report), text.render(report)
    table = doc["document"]["blocks"][1]["blocks"][0]
    assert table["rows"] == [CELLS[:3], CELLS[3:6]] and table["footer"] == CELLS[6:] and table["marks"][1] == ["", "better", ""]
    assert doc["answer"] == 42 and json.loads(data.dumps(doc)) == doc
    md_rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")]
    assert md_rows[1:4] == [CELLS[:3], [CELLS[3], "1.5000 (better)", "—"], ["**total**", "**3.8457**", "**100.0%**"]]
    html_rows = [
        [unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page)
    ]
    assert html_rows[1:4] == [CELLS[:3], [CELLS[3], "1.5000 (better)", "—"], CELLS[6:]]
    for cell in CELLS:
        assert cell in plain, cell
    assert "### Results" in md and "on held-out data" in md and "## Held out" in md and "only in Markdown" in md
    assert "only in Markdown" not in page and "only in Markdown" not in json.dumps(doc)
    assert "| loss_reduction | 0.360 | >= 20% | yes |" in md and "| ended | 0.500 | >= 90% | NO |" in md
    assert '<tr class="fail">' in page and '<a href="#held">Held out</a>' in page and "x (as text)" in plain


def test_html_escapes_text_and_keeps_only_its_own_markup():
    page = html.render(sample())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>not markup</b>" not in page and "<code>tiny</code>" in page and "<b>bold</b>" in page
    assert "&lt;warn&gt;" in page and "Mikä &lt;on&gt;?" in page and "<title>Demo &amp; &lt;test&gt;</title>" in page
    assert '<span class="tok">x</span>' in page  # RawHtml is kielo's own, already escaped


def test_a_row_of_the_wrong_length_raises():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table(["a", "b", "c"], [["1", "2"]])
    t = Table(["a", "b"])
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        t.add(["1", "2", "3"])
    t.rows.append(["only one"])  # appended around add(): caught when rendered
    with pytest.raises(ValueError):
        markdown.table(t)
    with pytest.raises(ValueError, match="unknown columns"):
        Table(["a"], formats={"b": ".1f"})


def test_files_are_written_and_figures_need_no_matplotlib(tmp_path):
    from kielo.report import Figure

    report = sample()
    report.blocks.append(Figure("curve", b"\x89PNG fake bytes", alt="a curve"))
    written = files.write(report, tmp_path, "r.md", "r.html", "r.json")
    assert set(written) == {"markdown", "html", "json"}
    assert files.write_figures(report, tmp_path / "plots") == {"curve": str(tmp_path / "plots" / "curve.png")}
    assert "![a curve](plots/curve.png)" in (tmp_path / "r.md").read_text()
    assert 'src="data:image/png;base64,iVBORyBmYWtlIGJ5dGVz"' in (tmp_path / "r.html").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["document"]["blocks"][-1] == {
        "type": "figure",
        "name": "curve",
        "file": "plots/curve.png",
    }
