"""Reports: the JSON result, a Markdown summary, the generations as JSONL, and the tables they share.

Tables are built once as plain text cells (:class:`Table`) and rendered to Markdown here and to HTML in
:mod:`kielo.evaluate.html`, so both reports always show the same numbers.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from kielo.config.load import save_config
from kielo.config.schema import Config
from kielo.evaluate.scores import GENERATION_METRICS, LOSS, METRICS_BY_KEY
from kielo.evaluate.stats import excludes_zero

log = logging.getLogger(__name__)

JSON_FILE, MARKDOWN_FILE, HTML_FILE = "report.json", "report.md", "report.html"
PER_TASK_METRICS = ("loss", "chrf", "task_success", "expected_language")
MISSING = "—"
MIN_VERDICT_EXAMPLES = 5


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    # Per cell: "better" / "worse" / "" (an interval that excludes zero), for colouring in HTML.
    marks: list[list[str]] = field(default_factory=list)


def safe_name(name: str) -> str:
    """A variant name usable as a file name."""
    return re.sub(r"[^\w.-]+", "_", name) or "variant"


def fmt(key: str, value) -> str:
    """A metric value as shown in reports (shares as %, chrF 0-100, loss to 4 places)."""
    if value is None:
        return MISSING
    if key in ("loss",):
        return f"{value:.4f}"
    if key == "perplexity":
        return f"{value:.2f}"
    metric = METRICS_BY_KEY.get(key)
    if metric is not None and metric.percent:
        return f"{value * 100:.1f}%"
    if key in ("length_ratio", "distinct_1", "distinct_2"):
        return f"{value:.2f}"
    return f"{value:.1f}"


def fmt_delta(key: str, ci: dict | None) -> str:
    """``+1.2 [-0.3, +2.8]``: the delta and its interval (percentage points for shares)."""
    if not ci:
        return MISSING
    scale, digits, unit = (100, 1, " pp") if METRICS_BY_KEY[key].percent else (1, 4 if key == "loss" else 1, "")
    return f"{ci['delta'] * scale:+.{digits}f}{unit} [{ci['low'] * scale:+.{digits}f}, {ci['high'] * scale:+.{digits}f}]"


def verdict(key: str, ci: dict | None) -> str:
    """``better``/``worse`` when the interval excludes zero and the metric has a direction, else ``""``.

    Not below :data:`MIN_VERDICT_EXAMPLES` examples: a bootstrap over two or three examples gives an
    interval, but not one to draw a conclusion from.
    """
    direction = METRICS_BY_KEY[key].higher_is_better
    if direction is None or not excludes_zero(ci) or ci["n"] < MIN_VERDICT_EXAMPLES:
        return ""
    return "better" if (ci["delta"] > 0) == direction else "worse"


def fmt_ci(key: str, ci: dict | None) -> str:
    if not ci:
        return MISSING
    return f"[{fmt(key, ci['low'])}, {fmt(key, ci['high'])}]"


def _loss_value(summary: dict, key: str = "loss"):
    return summary["loss"][key] if summary["loss"] else None


def _value(summary: dict, key: str):
    return _loss_value(summary) if key == "loss" else summary["metrics"].get(key)


# --- tables ---------------------------------------------------------------------------------------------


def evaluation_table(report: dict) -> Table:
    res = report["result"]
    o = res["overall"]
    t = Table("Results", ["metric", "value", "95% interval", "examples"])
    t.rows.append(
        [
            LOSS.label,
            fmt("loss", _loss_value(o)),
            fmt_ci("loss", res["intervals"]["loss"]),
            str(o["loss"]["examples"]) if o["loss"] else "0",
        ]
    )
    t.rows.append(["perplexity", fmt("perplexity", _loss_value(o, "perplexity")), "", ""])
    for metric in GENERATION_METRICS:
        t.rows.append(
            [
                metric.label,
                fmt(metric.key, o["metrics"][metric.key]),
                fmt_ci(metric.key, res["intervals"].get(metric.key)),
                str(o["counts"][metric.key]),
            ]
        )
    _corpus_rows(t, {report["name"]: res}, compare=False)
    return t


def _corpus_rows(t: Table, results: dict, compare: bool) -> None:
    """Rows of whole-corpus numbers (no per-example interval): diversity and speed."""
    tps = [fmt("x", r["timing"]["tokens_per_s"]) if r["timing"]["tokens_per_s"] else MISSING for r in results.values()]
    d2 = [fmt("distinct_2", r["diversity"]["distinct_2"]) for r in results.values()]
    for label, vals in (("distinct-2 (all answers)", d2), ("generation speed (tokens/s)", tps)):
        row = [label, vals[0], *[x for v in vals[1:] for x in (v, "")]] if compare else [label, vals[0], "", ""]
        t.rows.append(row)
        t.marks.append([""] * len(row))


def comparison_table(report: dict) -> Table:
    results, deltas = report["results"], report["deltas"]
    names = list(results)
    headers = ["metric", names[0]]
    for n in names[1:]:
        headers += [n, f"Δ {n} [95% CI]"]
    t = Table(
        "Summary: every model on the same examples",
        headers,
        caption="Δ is the adapter minus the base, with a paired bootstrap interval over examples; 'better'/'worse' "
        f"marks intervals that exclude zero (from {MIN_VERDICT_EXAMPLES} examples up).",
    )
    for key, label in [("loss", LOSS.label), ("perplexity", "perplexity")] + [(x.key, x.label) for x in GENERATION_METRICS]:
        value_key = "loss" if key == "perplexity" else key
        row, marks = (
            [
                label,
                fmt(
                    key,
                    _loss_value(results[names[0]]["overall"], "perplexity")
                    if key == "perplexity"
                    else _value(results[names[0]]["overall"], key),
                ),
            ],
            ["", ""],
        )
        for n in names[1:]:
            o = results[n]["overall"]
            row.append(fmt(key, _loss_value(o, "perplexity") if key == "perplexity" else _value(o, key)))
            ci = deltas[n]["overall"].get(value_key) if key != "perplexity" else None
            row.append(fmt_delta(value_key, ci) if key != "perplexity" else "")
            marks += ["", verdict(value_key, ci) if key != "perplexity" else ""]
        t.rows.append(row)
        t.marks.append(marks)
    _corpus_rows(t, results, compare=True)
    return t


def per_task_tables(report: dict) -> list[Table]:
    """One table per headline metric: rows are task types, columns the models and deltas."""
    if report["kind"] == "evaluation":
        per = report["result"]["per_task"]
        keys = ("loss", "chrf", "task_success", "end_token", "expected_language")
        t = Table("Per task type", ["task", "examples (generated)"] + [METRICS_BY_KEY[k].label for k in keys])
        for task, s in per.items():
            n = s["loss"]["examples"] if s["loss"] else 0
            t.rows.append([task, f"{max(n, s['generated'])} ({s['generated']})"] + [fmt(k, _value(s, k)) for k in keys])
        return [t]
    results, deltas = report["results"], report["deltas"]
    names = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    tables = []
    for key in PER_TASK_METRICS:
        headers = ["task", "generated", names[0]]
        for n in names[1:]:
            headers += [n, f"Δ {n} [95% CI]"]
        t = Table(f"Per task: {METRICS_BY_KEY[key].label}", headers)
        for task in tasks:
            base = results[names[0]]["per_task"].get(task)
            if base is None:
                continue
            row, marks = [task, str(base["generated"]), fmt(key, _value(base, key))], ["", "", ""]
            for n in names[1:]:
                s = results[n]["per_task"][task]
                ci = deltas[n]["per_task"].get(task, {}).get(key)
                row += [fmt(key, _value(s, key)), fmt_delta(key, ci)]
                marks += ["", verdict(key, ci)]
            if any(c != MISSING for c in row[2:]):
                t.rows.append(row)
                t.marks.append(marks)
        tables.append(t)
    return tables


def loss_difference_table(report: dict) -> Table:
    t = Table(
        "Per-example loss differences",
        ["adapter", "examples", "mean Δ loss", "median Δ loss", "improved", "most improved", "most worsened"],
        caption="Δ = loss with the adapter minus loss of the base, per example (mean token loss of its answer).",
    )
    for name, d in report["loss_differences"].items():
        if not d.get("n"):
            t.rows.append([name, "0", MISSING, MISSING, MISSING, "", ""])
            continue
        t.rows.append(
            [
                name,
                str(d["n"]),
                f"{d['mean']:+.4f}",
                f"{d['median']:+.4f}",
                f"{d['improved_share']:.0%}",
                ", ".join(f"{x['id']} ({x['delta']:+.3f})" for x in d["most_improved"][:3]),
                ", ".join(f"{x['id']} ({x['delta']:+.3f})" for x in d["most_worsened"][:3]),
            ]
        )
    return t


def adapter_tables(name: str, analysis: dict) -> list[Table]:
    head = Table(
        f"Adapter {name}", ["parameters", "rank", "scale (alpha/r)", "adapted modules", "mean ||ΔW||/||W||", "mean effective rank"]
    )
    head.rows.append(
        [
            f"{analysis['parameters']:,}",
            str(analysis["rank"]),
            f"{analysis['scale']:.3g}" if analysis["scale"] is not None else MISSING,
            str(len(analysis["modules"])),
            f"{analysis['mean_relative'] * 100:.3f}%" if analysis["mean_relative"] is not None else MISSING,
            f"{analysis['mean_effective_rank']:.2f}" if analysis["mean_effective_rank"] is not None else MISSING,
        ]
    )
    kinds = Table(f"Adapter {name}: mean relative update per module type", ["module type", "mean ||ΔW||/||W||"])
    kinds.rows = [[k, f"{v * 100:.3f}%"] for k, v in sorted(analysis["by_kind"].items(), key=lambda kv: -kv[1])]
    top = Table(f"Adapter {name}: modules changed most", ["module", "||ΔW||/||W||", "||ΔW||_F", "||W||_F", "effective rank"])
    top.rows = [
        [
            r["module"],
            f"{r['relative'] * 100:.3f}%",
            f"{r['update_norm']:.4g}",
            f"{r['weight_norm']:.4g}",
            f"{r['effective_rank']:.2f}",
        ]
        for r in analysis["top"]
    ]
    return [head, kinds, top]


def learning_curve_table(curve: dict) -> Table:
    t = Table("Learning curve", ["run", "step", "loss on this data", "validation loss (training log)"])
    for name, c in curve.items():
        val = {v["step"]: v["loss"] for v in c["validation"]}
        steps = sorted({p["step"] for p in c["points"]} | set(val))
        by_step = {p["step"]: p["loss"] for p in c["points"]}
        for s in steps:
            t.rows.append([name, str(s), fmt("loss", by_step.get(s)), fmt("loss", val.get(s))])
    return t


def harness_table(harness: dict) -> Table:
    variants = list(harness["results"])
    t = Table("lm-evaluation-harness", ["task", "metric", *variants], caption=harness["note"])
    keys = sorted({(task, metric) for res in harness["results"].values() for task, ms in res.items() for metric in ms})
    for task, metric in keys:
        t.rows.append(
            [
                task,
                metric,
                *[
                    f"{harness['results'][v].get(task, {}).get(metric):.4f}"
                    if harness["results"][v].get(task, {}).get(metric) is not None
                    else MISSING
                    for v in variants
                ],
            ]
        )
    return t


# --- Markdown -------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    if t.caption:
        lines += [t.caption, ""]
    lines.append("| " + " | ".join(map(_md_cell, t.headers)) + " |")
    lines.append("|" + "---|" * len(t.headers))
    for i, row in enumerate(t.rows):
        marks = t.marks[i] if i < len(t.marks) else []
        cells = [f"{c} ({marks[j]})" if j < len(marks) and marks[j] else c for j, c in enumerate(row)]
        lines.append("| " + " | ".join(map(_md_cell, cells)) + " |")
    return "\n".join(lines) + "\n"


def _settings_lines(report: dict) -> list[str]:
    g = report["settings"]["generation"]
    decoding = (
        "greedy"
        if report["settings"]["decoding"] == "greedy"
        else f"sampling (temperature {g['temperature']}, top_p {g['top_p']}, top_k {g['top_k']}, seed {g['seed']})"
    )
    d = report["data"]
    return [
        f"- model: `{report['model']['name']}` ({report['model']['quantization_bits'] or 16}-bit base, "
        f"template {report['model']['template']}, end token `{report['model']['end_token']}`, {report['model']['device']})",
        f"- data: `{d['path']}`: {d['examples']} examples ({d['with_reference']} with a reference), "
        f"{len(d['tasks'])} task types; generated on {d['generated']}",
        f"- generation: {decoding}, max_new_tokens {g['max_new_tokens']}, repetition_penalty {g['repetition_penalty']}",
        f"- intervals: {int(report['settings']['level'] * 100)}% bootstrap, {report['settings']['bootstrap_resamples']} resamples",
        f"- wall time: {report['wall_time_s']:.0f} s",
    ]


def _short(text: str | None, n: int = 160) -> str:
    if text is None:
        return MISSING
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def evaluation_markdown(report: dict) -> str:
    parts = [f"# kielo evaluate: {report['name']}", "", *_settings_lines(report), "", md_table(evaluation_table(report))]
    parts += [md_table(t) for t in per_task_tables(report)]
    if report.get("adapter_analysis"):
        parts += [md_table(t) for t in adapter_tables(report["name"], report["adapter_analysis"])]
    if report.get("harness"):
        parts.append(md_table(harness_table(report["harness"])))
    parts += _notes_md(report)
    return "\n".join(parts)


def _notes_md(report: dict) -> list[str]:
    if not report.get("notes"):
        return []
    return ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]


def comparison_markdown(report: dict) -> str:
    names = [v["name"] for v in report["variants"]]
    parts = [f"# kielo compare: {' vs '.join(names)}", "", *_settings_lines(report), ""]
    if (report.get("files") or {}).get("html"):
        parts += [f"The full report with plots and side-by-side generations: `{Path(report['files']['html']).name}`.", ""]
    parts.append(md_table(comparison_table(report)))
    parts += [md_table(t) for t in per_task_tables(report)]
    parts.append(md_table(loss_difference_table(report)))
    for name, wl in report["wins_and_losses"].items():
        parts += [f"### Biggest wins and losses: {name}", ""]
        for label, items in (("win", wl["wins"]), ("loss", wl["losses"])):
            for x in items:
                parts += [
                    f"- **{label}** `{x['id']}` ({x['task']}, quality {x['quality_base']:.2f} → {x['quality_adapter']:.2f})",
                    f"  - prompt: {_short(x['prompt'])}",
                    f"  - reference: {_short(x['reference'])}",
                    f"  - base: {_short(x['base'])}",
                    f"  - {name}: {_short(x['adapter'])}",
                ]
        parts.append("")
    for name, analysis in report["adapter_analysis"].items():
        parts += [md_table(t) for t in adapter_tables(name, analysis)]
    if report.get("learning_curve"):
        parts.append(md_table(learning_curve_table(report["learning_curve"])))
    if report.get("harness"):
        parts.append(md_table(harness_table(report["harness"])))
    plots = (report.get("files") or {}).get("plots") or {}
    if plots:
        parts += ["## Plots", "", *[f"![{k}]({Path(p).parent.name}/{Path(p).name})" for k, p in plots.items()], ""]
    parts += _notes_md(report)
    return "\n".join(parts)


# --- files ----------------------------------------------------------------------------------------------


def _guard(out: Path) -> None:
    from kielo.errors import KieloError

    if (out / "adapter_config.json").is_file() or (out / "checkpoints").is_dir():
        raise KieloError(
            f"{out} holds a training run; the report would overwrite its config", "pass another --output_dir for the report"
        )


def _write_generations(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = [r for r in rows if r["generation"] is not None]
    with path.open("w", encoding="utf-8") as fh:
        for r in keep:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


def write_evaluation(report: dict, out: Path, config: Config) -> None:
    """``report.json``, ``report.md``, ``generations.jsonl`` and the resolved config into ``out``."""
    _guard(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": str(out / JSON_FILE),
        "markdown": str(out / MARKDOWN_FILE),
        "generations": str(out / "generations.jsonl"),
        "config": str(save_config(config, out)),
    }
    _write_generations(out / "generations.jsonl", report["result"]["examples"])
    report["files"] = files
    (out / MARKDOWN_FILE).write_text(evaluation_markdown(report), encoding="utf-8")
    _write_json(report, out / JSON_FILE)
    log.info("report written to %s", out / MARKDOWN_FILE)


def write_comparison(report: dict, out: Path, config: Config) -> None:
    """``report.json``, ``report.md``, ``report.html``, ``generations/*.jsonl``, ``plots/*.png`` and the config."""
    from kielo.evaluate import html, plots

    _guard(out)
    out.mkdir(parents=True, exist_ok=True)
    gens = {}
    for name, res in report["results"].items():
        path = out / "generations" / f"{safe_name(name)}.jsonl"
        _write_generations(path, res["examples"])
        gens[name] = str(path)
    drawn = plots.draw_all(report, out / "plots")
    if not drawn:
        report["notes"].append("Plots skipped: matplotlib is not installed (pip install 'kielo[eval]').")
    report["files"] = {
        "json": str(out / JSON_FILE),
        "markdown": str(out / MARKDOWN_FILE),
        "html": str(out / HTML_FILE),
        "generations": gens,
        "plots": drawn,
        "config": str(save_config(config, out)),
    }
    (out / HTML_FILE).write_text(html.comparison_html(report), encoding="utf-8")
    (out / MARKDOWN_FILE).write_text(comparison_markdown(report), encoding="utf-8")
    _write_json(report, out / JSON_FILE)
    log.info("report written to %s", out / HTML_FILE)
