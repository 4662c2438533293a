"""An analysis as a report: ``analysis.json`` (every number), ``plots/*.png``, a self-contained
``analysis.html`` and the terminal summary, all built from one :class:`~kielo.report.Report`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from kielo.analyze import plots
from kielo.analyze.render import LEGEND, to_html
from kielo.analyze.tables import all_tables, duplicate_examples, fragmented_tables, pairs_table, recommendation
from kielo.extras import install_hint, installed
from kielo.report import Bullets, Callout, Figure, KeyValues, Paragraph, RawHtml, Report, Section, files, text

log = logging.getLogger(__name__)

JSON_FILE = "analysis.json"
HTML_FILE = "analysis.html"
PLOTS_DIR = files.FIGURES_DIR

# The token-level renderings of examples (kielo.analyze.render.to_html) bring their own classes.
CSS = """
.example pre{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;background:#fafafa;
border:1px solid #ddd;padding:.6em;line-height:1.6}
.exhead{font-weight:600;margin-top:1em}
.tok{border-right:1px solid #e0e0e0}.masked{color:#888}.trained{background:#c8e6c9;color:#1b5e20}
.special{font-weight:700;color:#8e24aa}.trained.special{color:#6a1b9a}.cut{text-decoration:line-through;color:#c62828}
.more{color:#c62828}
"""


def analysis_report(result: dict, figures: dict[str, Figure] | None = None) -> Report:
    """The analysis as a report: tables, warnings, figures (when drawn) and the rendered examples.

    The terminal summary leaves out what only a page can show (figures, token spans, word lists).
    """
    figs = figures or {}
    tables = all_tables(result)
    splits = result["splits"]
    head = (
        f"model {result['model']} ({result['template']} template, end token {result['end_token']}), "
        f"{sum(s['examples'] for s in splits.values())} examples in {len(splits)} split(s), {result['timing']['seconds']:.1f} s"
    )
    intro = (
        f"Model **{result['model']}**, {result['template']} template, end token `{result['end_token']}`; "
        f"{result['timing']['examples']} examples analysed in {result['timing']['seconds']:.1f} s. "
        f"Every number is in `{JSON_FILE}`."
    )
    warnings = [Callout(w) for w in result["warnings"]] or [
        Callout("No warnings.", kind="ok", only="html"),
        Paragraph("none", only="text"),
    ]
    duplicates = duplicate_examples(result)
    rec = recommendation(result)
    # A page opens with the verdicts; the terminal ends with them, where the eye lands.
    verdicts = ([Section("Recommendation", [Paragraph(rec)])] if rec else []) + [Section("Warnings", warnings)]
    blocks = [
        Paragraph(head, only="text"),
        Paragraph(intro, only="html"),
        *[replace(v, only="html") for v in verdicts],
        tables[0],
        *[f for k, f in figs.items() if k.startswith("lengths_")],
        tables[1],
        tables[2],
        *([figs["token_budget"]] if "token_budget" in figs else []),
        tables[3],
        *([pairs] if (pairs := pairs_table(result)) else []),
        *([Bullets(duplicates, only="html")] if duplicates else []),
        tables[4],
        tables[5],
        *([figs["tokenizers"]] if "tokenizers" in figs else []),
        Section("Most fragmented frequent words", fragmented_tables(result), only="html"),
        Section(
            "Examples as the model sees them",
            [
                Paragraph(f"{LEGEND}; a thin line separates tokens; hover a token for its id. ↵ is a newline.", style="note"),
                RawHtml("".join(to_html(r) for r in result["examples"])),
            ],
            only="html",
        ),
    ]
    blocks += [replace(v, only="text") for v in verdicts]
    outputs = result.get("outputs")
    if outputs:
        blocks.append(
            KeyValues(
                [
                    ("Report", outputs["html"]),
                    ("JSON", outputs["json"]),
                    ("Plots", ", ".join(outputs["plots"]) or f"none (matplotlib is not installed: {install_hint('matplotlib')})"),
                ],
                only="text",
            )
        )
    return Report(f"kielo analyze-data: {', '.join(result['files'])}", blocks, data=result, css=CSS, nav=False)


def summary(result: dict) -> str:
    """Everything a user should see after an analysis, as terminal text."""
    return text.render(analysis_report(result), title=False)


def write_report(result: dict, lengths: dict[str, dict[str, np.ndarray]], out: Path) -> dict:
    """Write the JSON, the PNG plots and the HTML report into ``out``; returns their paths."""
    max_length = next(iter(result["splits"].values()))["max_length"]
    figures = []
    if installed("matplotlib"):
        figures = [plots.length_histograms(name, feats, max_length) for name, feats in lengths.items()]
        figures += [plots.token_budget(result["token_budget"]), plots.tokenizers(result["tokenizers"])]
    else:  # every number is still in the tables and analysis.json; only the pictures need matplotlib
        log.warning("plots skipped: matplotlib is not installed (%s)", install_hint("matplotlib"))
    report = analysis_report(result, {f.name: f for f in figures})
    written = files.write_figures(report, out / PLOTS_DIR)
    outputs = {"json": str(out / JSON_FILE), "html": str(out / HTML_FILE), "plots": list(written.values())}
    result["outputs"] = outputs
    files.write(report, out, html_file=HTML_FILE, json_file=JSON_FILE)
    return outputs
