"""Write an analysis: ``analysis.json`` (every number), ``plots/*.png`` and a self-contained ``analysis.html``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from kielo.analyze import plots
from kielo.analyze.render import LEGEND, to_html
from kielo.analyze.tables import Table, all_tables, recommendation

JSON_FILE = "analysis.json"
HTML_FILE = "analysis.html"
PLOTS_DIR = "plots"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f5f5f5}td{font-variant-numeric:tabular-nums}.note{color:#666;font-size:.85em}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:.4em .8em;margin:.3em 0}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.4em .8em}
img{max-width:100%;margin:.5em 0}
.example pre{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;background:#fafafa;
border:1px solid #ddd;padding:.6em;line-height:1.6}
.exhead{font-weight:600;margin-top:1em}
.tok{border-right:1px solid #e0e0e0}.masked{color:#888}.trained{background:#c8e6c9;color:#1b5e20}
.special{font-weight:700;color:#8e24aa}.trained.special{color:#6a1b9a}.cut{text-decoration:line-through;color:#c62828}
.more{color:#c62828}
"""


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    return f"<h2>{html.escape(table.title)}</h2><table><tr>{head}</tr>{body}</table>{notes}"


def _img(name: str, png: bytes) -> str:
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fragmented(result: dict) -> str:
    parts = []
    for name, e in result["tokenizers"].items():
        rows = "".join(
            f"<tr><td>{html.escape(w['word'])}</td><td>{w['count']}</td><td>{w['pieces']}</td>"
            f"<td><code>{html.escape(w['split'])}</code></td></tr>"
            for w in e["most_fragmented"]
        )
        parts.append(
            f"<h3>{html.escape(name)}</h3><table><tr><th>word</th><th>count</th><th>pieces</th><th>split</th></tr>{rows}</table>"
        )
    return "<h2>Most fragmented frequent words</h2>" + "".join(parts)


def _duplicate_examples(result: dict) -> str:
    items = []
    for name, s in result["duplicates"]["splits"].items():
        for d in s["exact_examples"]:
            items.append(
                f"<li>{html.escape(name)}: exact — {html.escape(d['b'])} = {html.escape(d['a'])}: {html.escape(d['text'])}</li>"
            )
        for d in s["near_examples"]:
            items.append(
                f"<li>{html.escape(name)}: near (J≈{d['jaccard']}) — {html.escape(d['b'])} ~ {html.escape(d['a'])}:"
                f" {html.escape(d['text'])}</li>"
            )
    for o in result["duplicates"]["overlap"]:
        for d in o["examples"]:
            items.append(
                f"<li>{html.escape(o['b'])} also in {html.escape(o['a'])}: {html.escape(d['b'])}: {html.escape(d['text'])}</li>"
            )
    return f'<ul class="note">{"".join(items)}</ul>' if items else ""


def write_html(result: dict, pngs: dict[str, bytes], path: Path) -> None:
    """The self-contained report: tables, warnings, plots inlined as base64 PNG, rendered examples."""
    warnings = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in result["warnings"]) or '<div class="ok">No warnings.</div>'
    tables = all_tables(result)
    body = [
        f"<h1>kielo analyze-data: {html.escape(', '.join(result['files']))}</h1>",
        f"<p>Model <b>{html.escape(result['model'])}</b>, {html.escape(result['template'])} template, end token "
        f"<code>{html.escape(result['end_token'])}</code>; {result['timing']['examples']} examples analysed in "
        f"{result['timing']['seconds']:.1f} s. Every number is in <code>{JSON_FILE}</code>.</p>",
        "<h2>Warnings</h2>" + warnings,
        f"<h2>Recommendation</h2><p>{html.escape(recommendation(result))}</p>",
        _html_table(tables[0]),
        "".join(_img(k, v) for k, v in pngs.items() if k.startswith("lengths_")),
        _html_table(tables[1]),
        _html_table(tables[2]),
        _img("token_budget", pngs["token_budget"]),
        _html_table(tables[3]),
        _duplicate_examples(result),
        _html_table(tables[4]),
        _html_table(tables[5]),
        _img("tokenizers", pngs["tokenizers"]),
        _fragmented(result),
        f'<h2>Examples as the model sees them</h2><p class="note">{html.escape(LEGEND)}; '
        "a thin line separates tokens; hover a token for its id. ↵ is a newline.</p>",
        "".join(to_html(r) for r in result["examples"]),
    ]
    path.write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kielo analyze-data</title>'
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>",
        encoding="utf-8",
    )


def write_report(result: dict, lengths: dict[str, dict[str, np.ndarray]], out: Path) -> dict:
    """Write the JSON, the PNG plots and the HTML report into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOTS_DIR).mkdir(exist_ok=True)
    max_length = next(iter(result["splits"].values()))["max_length"]
    pngs = {f"lengths_{name}": plots.length_histograms(name, feats, max_length) for name, feats in lengths.items()}
    pngs["token_budget"] = plots.token_budget(result["token_budget"])
    pngs["tokenizers"] = plots.tokenizers(result["tokenizers"])
    written = []
    for name, png in pngs.items():
        path = out / PLOTS_DIR / f"{name}.png"
        path.write_bytes(png)
        written.append(str(path))
    outputs = {"json": str(out / JSON_FILE), "html": str(out / HTML_FILE), "plots": written}
    result["outputs"] = outputs
    (out / JSON_FILE).write_text(json.dumps(result, indent=1, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    write_html(result, pngs, out / HTML_FILE)
    return outputs
