"""Write a report's files: Markdown, HTML, JSON and its figures as PNG, from the one Report object."""

from __future__ import annotations

from pathlib import Path

from kielo.report import data, html, markdown
from kielo.report.blocks import Block, Figure, Report, Section

FIGURES_DIR = "plots"


def figures(blocks: list[Block]) -> list[Figure]:
    """Every figure under ``blocks``, in order."""
    out: list[Figure] = []
    for b in blocks:
        if isinstance(b, Section):
            out += figures(b.blocks)
        elif isinstance(b, Figure):
            out.append(b)
    return out


def write_figures(report: Report, folder: Path) -> dict[str, str]:
    """Each figure as ``<folder>/<name>.png``; returns ``{name: path}``."""
    written = {}
    for f in figures(report.blocks):
        path = folder / f"{f.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.png)
        written[f.name] = str(path)
    return written


def write(
    report: Report,
    folder: Path,
    markdown_file: str | None = None,
    html_file: str | None = None,
    json_file: str | None = None,
    json_indent: int = 1,
) -> dict[str, str]:
    """Write the outputs named (file names inside ``folder``) and returns their paths by kind.

    Figures go to ``folder/plots`` whenever the report has any, since Markdown links them there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if markdown_file:
        (folder / markdown_file).write_text(markdown.render(report, FIGURES_DIR), encoding="utf-8")
        written["markdown"] = str(folder / markdown_file)
    if html_file:
        (folder / html_file).write_text(html.render(report), encoding="utf-8")
        written["html"] = str(folder / html_file)
    if json_file:
        written["json"] = str(data.write_json(data.render(report, FIGURES_DIR), folder / json_file, json_indent))
    return written
