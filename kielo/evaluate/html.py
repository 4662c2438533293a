"""The comparison as one self-contained HTML file: tables, plots (inline PNG), side-by-side generations.

Everything is inside the file (CSS inline, images as base64 ``data:`` URIs, links only to its own
sections), so it can be mailed or opened offline. Every piece of text from data or models is escaped.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from kielo.evaluate.report import (
    MISSING,
    Table,
    adapter_tables,
    comparison_table,
    fmt,
    harness_table,
    learning_curve_table,
    loss_difference_table,
    per_task_tables,
    safe_name,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.better{background:#e3f5e1}td.worse{background:#fbe3e3}
.caption{color:#555;font-size:.85em;margin:.2em 0}
.gen{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;max-width:32em}
.meta{color:#666;font-size:.8em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
nav a{margin-right:1em}ul.notes li{margin:.3em 0}details{margin:.5em 0}
"""


def _table(t: Table, level: int = 3) -> str:
    out = [f"<h{level}>{escape(t.title)}</h{level}>"]
    if t.caption:
        out.append(f'<p class="caption">{escape(t.caption)}</p>')
    out.append("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.headers) + "</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        marks = t.marks[i] if i < len(t.marks) else []
        cells = []
        for j, c in enumerate(row):
            mark = marks[j] if j < len(marks) else ""
            cls = f' class="{mark}"' if mark else ""
            cells.append(f"<td{cls}>{escape(c)}{f' <b>({mark})</b>' if mark else ''}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _image(path: str | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _gen(text: str | None) -> str:
    return f'<div class="gen">{escape(text) if text is not None else MISSING}</div>'


def _metrics_line(m: dict) -> str:
    parts = []
    for key, label in (
        ("chrf", "chrF"),
        ("task_success", "task"),
        ("end_token", "ended"),
        ("expected_language", "language"),
        ("loss", "loss"),
    ):
        v = m.get(key)
        if v is not None:
            parts.append(f"{label} {fmt(key, v) if not isinstance(v, bool) else ('yes' if v else 'no')}")
    return f'<div class="meta">{escape(" · ".join(parts))}</div>'


def _wins_losses(name: str, wl: dict) -> str:
    out = [
        f"<h3>{escape(name)} vs base</h3>",
        f'<p class="caption">Ranked by answer quality (mean of task success and chrF/100) over {wl["ranked"]} generated examples.</p>',
    ]
    for label, items in (("Wins", wl["wins"]), ("Losses", wl["losses"])):
        out.append(f"<h4>{label}</h4>")
        if not items:
            out.append('<p class="caption">none</p>')
            continue
        out.append(
            f"<table><thead><tr><th>example</th><th>prompt</th><th>reference</th><th>base</th><th>{escape(name)}</th>"
            "</tr></thead><tbody>"
        )
        for x in items:
            out.append(
                f"<tr><td>{escape(str(x['id']))}<div class='meta'>{escape(x['task'])}<br>quality "
                f"{x['quality_base']:.2f} → {x['quality_adapter']:.2f}</div></td>"
                f"<td>{_gen(x['prompt'])}</td><td>{_gen(x['reference'])}</td>"
                f"<td>{_gen(x['base'])}{_metrics_line(x['base_metrics'])}</td>"
                f"<td>{_gen(x['adapter'])}{_metrics_line(x['adapter_metrics'])}</td></tr>"
            )
        out.append("</tbody></table>")
    return "\n".join(out)


def _all_generations(report: dict) -> str:
    names = list(report["results"])
    rows = {n: report["results"][n]["examples"] for n in names}
    first = rows[names[0]]
    generated = [i for i, r in enumerate(first) if r["generation"] is not None]
    if not generated:
        return "<p>No generations (run without --no_generate to get them).</p>"
    out = [
        f"<details><summary>All {len(generated)} generated examples side by side</summary>",
        "<table><thead><tr><th>example</th><th>prompt</th><th>reference</th>"
        + "".join(f"<th>{escape(n)}</th>" for n in names)
        + "</tr></thead><tbody>",
    ]
    for i in generated:
        r = first[i]
        cells = "".join(f"<td>{_gen(rows[n][i]['generation'])}{_metrics_line(rows[n][i])}</td>" for n in names)
        out.append(
            f"<tr><td>{escape(str(r['id']))}<div class='meta'>{escape(r['task'])}</div></td>"
            f"<td>{_gen(r['prompt'])}</td><td>{_gen(r['reference'])}</td>{cells}</tr>"
        )
    out.append("</tbody></table></details>")
    return "\n".join(out)


def _settings(report: dict) -> str:
    d, g, model = report["data"], report["settings"]["generation"], report["model"]
    decoding = (
        "greedy"
        if report["settings"]["decoding"] == "greedy"
        else f"sampling (temperature {g['temperature']}, top_p {g['top_p']}, top_k {g['top_k']}, seed {g['seed']})"
    )
    items = [
        f"base model: {model['name']} ({model['quantization_bits'] or 16}-bit, template {model['template']}, "
        f"end token {model['end_token']}, {model['device']})",
        "variants: "
        + "; ".join(f"{v['name']}" + (f" = {v['adapter']}" if v["adapter"] else " (no adapter)") for v in report["variants"]),
        f"data: {d['path']}: {d['examples']} examples ({d['with_reference']} with a reference) in {len(d['tasks'])} "
        f"task types; loss on every example with a reference, generation on {d['generated']}",
        f"generation: {decoding}, max_new_tokens {g['max_new_tokens']}, batch {g['batch_size']}",
        f"intervals: {int(report['settings']['level'] * 100)}% paired bootstrap over examples, "
        f"{report['settings']['bootstrap_resamples']} resamples",
        f"created {report['created']}, wall time {report['wall_time_s']:.0f} s",
    ]
    return "<ul>" + "".join(f"<li>{escape(x)}</li>" for x in items) + "</ul>"


def comparison_html(report: dict) -> str:
    """The whole comparison report as one HTML document."""
    plots = (report.get("files") or {}).get("plots") or {}
    names = [v["name"] for v in report["variants"]]
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    sections.append(("summary", "Summary", _table(comparison_table(report)) + _image(plots.get("metric_deltas"), "metric deltas")))
    sections.append(
        ("tasks", "Per task type", "\n".join(_table(t) for t in per_task_tables(report)) + _image(plots.get("per_task"), "per task"))
    )
    sections.append(
        ("loss", "Per-example loss", _table(loss_difference_table(report)) + _image(plots.get("loss_differences"), "loss differences"))
    )
    sections.append(
        ("examples", "Biggest wins and losses", "\n".join(_wins_losses(n, wl) for n, wl in report["wins_and_losses"].items()))
    )
    adapter_parts = []
    for name, analysis in report["adapter_analysis"].items():
        stem = f"adapter_{safe_name(name)}"
        adapter_parts.append(
            "\n".join(_table(t) for t in adapter_tables(name, analysis))
            + _image(plots.get(f"{stem}_heatmap"), f"{name} heatmap")
            + _image(plots.get(f"{stem}_spectrum"), f"{name} spectrum")
        )
    sections.append(
        (
            "adapter",
            "Adapter analysis",
            '<p class="caption">ΔW = scale·BA per adapted layer; its Frobenius norm relative to the base weight '
            "(dequantized when 4/8-bit), and the singular-value spectrum of BA (effective rank: exp of the "
            "entropy of the normalized singular values).</p>" + "\n".join(adapter_parts),
        )
    )
    if report.get("learning_curve"):
        sections.append(
            (
                "curve",
                "Learning curve",
                _table(learning_curve_table(report["learning_curve"])) + _image(plots.get("learning_curve"), "learning curve"),
            )
        )
    if report.get("harness"):
        sections.append(("harness", "lm-evaluation-harness", _table(harness_table(report["harness"]))))
    sections.append(("generations", "Generations", _all_generations(report)))
    if report.get("notes"):
        sections.append(("notes", "Notes", '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>"))
    nav = "<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in sections) + "</nav>"
    body = "\n".join(f'<h2 id="{a}">{escape(t)}</h2>\n{b}' for a, t, b in sections)
    title = f"kielo compare: {' vs '.join(names)}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{escape(title)}</h1>\n{_settings(report)}\n{nav}\n{body}\n</body></html>\n"
    )
