"""`kielo evaluate` and `kielo compare` as report-kit Reports: one object per report, rendered to
``report.md``, ``report.html`` and ``report.json`` alike."""

from __future__ import annotations

from pathlib import Path

from kielo.evaluate.format import fmt, safe_name
from kielo.evaluate.preference_report import preference_section
from kielo.evaluate.tables import (
    adapter_tables,
    comparison_table,
    evaluation_table,
    harness_table,
    hyperparameter_table,
    learning_curve_table,
    loss_difference_table,
    per_task_tables,
    training_table,
)
from kielo.report import Block, Bullets, Example, Examples, Figure, KeyValues, Paragraph, Report, Section, Shown

ADAPTER_NOTE = (
    "ΔW = scale·BA per adapted layer; its Frobenius norm relative to the base weight (dequantized when "
    "4/8-bit), and the singular-value spectrum of BA (effective rank: exp of the entropy of the normalized "
    "singular values)."
)


def settings(report: dict) -> KeyValues:
    """Model, variants, data, decoding and interval settings of a report."""
    g, model, d = report["settings"]["generation"], report["model"], report["data"]
    decoding = (
        "greedy"
        if report["settings"]["decoding"] == "greedy"
        else f"sampling (temperature {g['temperature']}, top_p {g['top_p']}, top_k {g['top_k']}, seed {g['seed']})"
    )
    source = report["settings"].get("generation_source")  # absent in reports written before it was recorded
    template_from = f" from {source['template_from']}" if source else ""
    items = [
        (
            "model",
            f"`{model['name']}` ({model['quantization_bits'] or 16}-bit base, template {model['template']}{template_from}, "
            f"end token `{model['end_token']}`, {model['device']})",
        )
    ]
    if report.get("variants"):
        items.append(
            (
                "variants",
                "; ".join(v["name"] + (f" = {v['adapter']}" if v["adapter"] else " (no adapter)") for v in report["variants"]),
            )
        )
    items += [
        (
            "data",
            f"`{d['path']}`: {d['examples']} examples ({d['with_reference']} with a reference), {len(d['tasks'])} task types; "
            f"loss on every example with a reference, generation on {d['generated']}",
        ),
        (
            "generation",
            f"{decoding}, max_new_tokens {g['max_new_tokens']}, stop {g['stop'] or 'none'}, repetition_penalty "
            f"{g['repetition_penalty']}, batch {g['batch_size']}" + (f" ({source['text']})" if source else ""),
        ),
        (
            "intervals",
            f"{int(report['settings']['level'] * 100)}% {'paired ' if report.get('variants') else ''}bootstrap over examples, "
            f"{report['settings']['bootstrap_resamples']} resamples",
        ),
        ("wall time", f"{report['wall_time_s']:.0f} s" + (f", created {report['created']}" if report.get("created") else "")),
    ]
    return KeyValues(items)


def training_blocks(training: dict, figures: dict[str, Figure]) -> list[Block]:
    """What training recorded for each run (see :mod:`kielo.evaluate.training`): a summary table, the
    training curve (when drawn) and every hyperparameter."""
    if not training:
        return [Paragraph("No adapter comes from a kielo run folder, so there is no training curve to show.", style="note")]
    curve = [figures["training_curve"]] if "training_curve" in figures else []
    return [training_table(training), *curve, hyperparameter_table(training)]


def _per_task(report: dict, figures: list[Block]) -> list[Block]:
    """The per-task tables that hold a row, or a note why there are none."""
    tables = [t for t in per_task_tables(report) if t.rows]
    if tables:
        return [*tables, *figures]
    tasks = {t for r in report["results"].values() for t in r["per_task"]}
    why = (
        "Every example is of one task type (rows tagged with `task` get one table row each), so a per-task "
        "breakdown would repeat the summary."
        if len(tasks) < 2
        else "No task type has a measured value."
    )
    return [Paragraph(why, style="note")]


def _notes(report: dict) -> list[Block]:
    return [Section("Notes", [Bullets(list(report["notes"]))], anchor="notes")] if report.get("notes") else []


def evaluation_report(report: dict) -> Report:
    """One model's evaluation."""
    blocks: list[Block] = [settings(report), evaluation_table(report), *[t for t in per_task_tables(report) if t.rows]]
    if report.get("adapter_analysis"):
        blocks += adapter_tables(report["name"], report["adapter_analysis"])
    if report.get("harness"):
        blocks.append(harness_table(report["harness"]))
    return Report(f"kielo evaluate: {report['name']}", blocks + _notes(report), data=report)


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
            parts.append(f"{label} {('yes' if v else 'no') if isinstance(v, bool) else fmt(key, v)}")
    return " · ".join(parts)


def _wins_losses(name: str, wl: dict) -> Section:
    def example(x: dict) -> Example:
        return Example(
            str(x["id"]),
            f"{x['task']} · quality {x['quality_base']:.2f} → {x['quality_adapter']:.2f}",
            [
                Shown("prompt", x["prompt"]),
                Shown("reference", x["reference"]),
                Shown("base", x["base"], _metrics_line(x["base_metrics"])),
                Shown(name, x["adapter"], _metrics_line(x["adapter_metrics"])),
            ],
        )

    return Section(
        f"{name} vs base",
        [
            Paragraph(
                f"Ranked by answer quality (mean of task success and chrF/100) over {wl['ranked']} generated examples.", style="note"
            ),
            Section("Wins", [Examples([example(x) for x in wl["wins"]])]),
            Section("Losses", [Examples([example(x) for x in wl["losses"]])]),
        ],
    )


def _generations(report: dict) -> list[Block]:
    names = list(report["results"])
    rows = {n: report["results"][n]["examples"] for n in names}
    first = rows[names[0]]
    generated = [i for i, r in enumerate(first) if r["generation"] is not None]
    if not generated:
        return [Paragraph("No generations (run without --no_generate to get them).")]
    examples = [
        Example(
            str(first[i]["id"]),
            first[i]["task"],
            [Shown("prompt", first[i]["prompt"]), Shown("reference", first[i]["reference"])]
            + [Shown(n, rows[n][i]["generation"], _metrics_line(rows[n][i])) for n in names],
        )
        for i in generated
    ]
    # Every answer of every model is in generations/*.jsonl; the page shows them, the Markdown points there.
    return [
        Examples(examples, summary=f"All {len(generated)} generated examples side by side", only="html"),
        Paragraph(f"All {len(generated)} generated examples side by side are in the HTML report and `generations/`.", only="markdown"),
    ]


def comparison_report(report: dict, figures: dict[str, Figure]) -> Report:
    """The base and each adapter on the same examples: tables, ``figures`` (by name) and generations."""

    def fig(name: str) -> list[Block]:
        return [figures[name]] if name in figures else []

    blocks: list[Block] = [settings(report)]
    html_file = (report.get("files") or {}).get("html")
    if html_file:
        blocks.append(
            Paragraph(f"The full report with plots and side-by-side generations: `{Path(html_file).name}`.", only="markdown")
        )
    adapter_parts: list[Block] = [Paragraph(ADAPTER_NOTE, style="note")]
    for name, analysis in report["adapter_analysis"].items():
        stem = f"adapter_{safe_name(name)}"
        adapter_parts += [*adapter_tables(name, analysis), *fig(f"{stem}_heatmap"), *fig(f"{stem}_spectrum")]
    blocks += [
        Section("Summary", [comparison_table(report), *fig("metric_deltas")], anchor="summary"),
        *preference_section(report.get("preference")),
        Section("Per task type", _per_task(report, fig("per_task")), anchor="tasks"),
        Section("Per-example loss", [loss_difference_table(report), *fig("loss_differences")], anchor="loss"),
        Section("Biggest wins and losses", [_wins_losses(n, wl) for n, wl in report["wins_and_losses"].items()], anchor="examples"),
        Section("Adapter analysis", adapter_parts, anchor="adapter"),
    ]
    if "training" in report:
        blocks.append(Section("Training", training_blocks(report["training"], figures), anchor="training"))
    if report.get("learning_curve"):
        blocks.append(
            Section("Learning curve", [learning_curve_table(report["learning_curve"]), *fig("learning_curve")], anchor="curve")
        )
    if report.get("harness"):
        blocks.append(Section("lm-evaluation-harness", [harness_table(report["harness"])], anchor="harness"))
    blocks.append(Section("Generations", _generations(report), anchor="generations"))
    names = [v["name"] for v in report["variants"]]
    return Report(f"kielo compare: {' vs '.join(names)}", blocks + _notes(report), data=report)
