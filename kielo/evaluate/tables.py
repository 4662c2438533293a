"""The evaluation's tables as report-kit tables: Markdown, HTML and JSON all show these cells."""

from __future__ import annotations

from kielo.evaluate.format import MIN_VERDICT_EXAMPLES, MISSING, fmt, fmt_ci, fmt_delta, loss_value, value, verdict
from kielo.evaluate.scores import GENERATION_METRICS, LOSS, METRICS_BY_KEY
from kielo.report import Table

PER_TASK_METRICS = ("loss", "chrf", "task_success", "expected_language")


def evaluation_table(report: dict) -> Table:
    """One model's results: each metric with its interval and example count."""
    res = report["result"]
    o = res["overall"]
    t = Table(["metric", "value", "95% interval", "examples"], title="Results")
    t.add(
        [
            LOSS.label,
            fmt("loss", loss_value(o)),
            fmt_ci("loss", res["intervals"]["loss"]),
            str(o["loss"]["examples"]) if o["loss"] else "0",
        ]
    )
    t.add(["perplexity", fmt("perplexity", loss_value(o, "perplexity")), "", ""])
    for metric in GENERATION_METRICS:
        t.add(
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
        t.add(row)


def comparison_table(report: dict) -> Table:
    """Every model on the same examples, each adapter's delta from the base with its interval and verdict."""
    results, deltas = report["results"], report["deltas"]
    names = list(results)
    headers = ["metric", names[0]]
    for n in names[1:]:
        headers += [n, f"Δ {n} [95% CI]"]
    t = Table(
        headers,
        title="Summary: every model on the same examples",
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
                    loss_value(results[names[0]]["overall"], "perplexity")
                    if key == "perplexity"
                    else value(results[names[0]]["overall"], key),
                ),
            ],
            ["", ""],
        )
        for n in names[1:]:
            o = results[n]["overall"]
            row.append(fmt(key, loss_value(o, "perplexity") if key == "perplexity" else value(o, key)))
            ci = deltas[n]["overall"].get(value_key) if key != "perplexity" else None
            row.append(fmt_delta(value_key, ci) if key != "perplexity" else "")
            marks += ["", verdict(value_key, ci) if key != "perplexity" else ""]
        t.add(row, marks)
    _corpus_rows(t, results, compare=True)
    return t


def per_task_tables(report: dict) -> list[Table]:
    """One table per headline metric: rows are task types, columns the models and deltas.

    With fewer than two task types the tables have no rows (one row would repeat the summary), and a row
    shows only where the task has a value of that metric."""
    if report["kind"] == "evaluation":
        per = report["result"]["per_task"]
        if len(per) < 2:
            per = {}
        keys = ("loss", "chrf", "task_success", "end_token", "expected_language")
        t = Table(["task", "examples (generated)"] + [METRICS_BY_KEY[k].label for k in keys], title="Per task type")
        for task, s in per.items():
            n = s["loss"]["examples"] if s["loss"] else 0
            t.add([task, f"{max(n, s['generated'])} ({s['generated']})"] + [fmt(k, value(s, k)) for k in keys])
        return [t]
    results, deltas = report["results"], report["deltas"]
    names = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    if len(tasks) < 2:
        tasks = []
    tables = []
    for key in PER_TASK_METRICS:
        headers = ["task", "generated", names[0]]
        for n in names[1:]:
            headers += [n, f"Δ {n} [95% CI]"]
        t = Table(headers, title=f"Per task: {METRICS_BY_KEY[key].label}")
        for task in tasks:
            base = results[names[0]]["per_task"].get(task)
            if base is None:
                continue
            row, marks = [task, str(base["generated"]), fmt(key, value(base, key))], ["", "", ""]
            for n in names[1:]:
                s = results[n]["per_task"][task]
                ci = deltas[n]["per_task"].get(task, {}).get(key)
                row += [fmt(key, value(s, key)), fmt_delta(key, ci)]
                marks += ["", verdict(key, ci)]
            if any(c != MISSING for c in row[2:]):
                t.add(row, marks)
        tables.append(t)
    return tables


def loss_difference_table(report: dict) -> Table:
    """Per adapter: how the per-example loss moved from the base."""
    t = Table(
        title="Per-example loss differences",
        columns=["adapter", "examples", "mean Δ loss", "median Δ loss", "improved", "most improved", "most worsened"],
        caption="Δ = loss with the adapter minus loss of the base, per example (mean token loss of its answer).",
    )
    for name, d in report["loss_differences"].items():
        if not d.get("n"):
            t.add([name, "0", MISSING, MISSING, MISSING, "", ""])
            continue
        t.add(
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
    """An adapter's size, its update per module type and the modules it changed most."""
    head = Table(
        title=f"Adapter {name}",
        columns=["parameters", "rank", "scale (alpha/r)", "adapted modules", "mean ||ΔW||/||W||", "mean effective rank"],
    )
    head.add(
        [
            f"{analysis['parameters']:,}",
            str(analysis["rank"]),
            f"{analysis['scale']:.3g}" if analysis["scale"] is not None else MISSING,
            str(len(analysis["modules"])),
            f"{analysis['mean_relative'] * 100:.3f}%" if analysis["mean_relative"] is not None else MISSING,
            f"{analysis['mean_effective_rank']:.2f}" if analysis["mean_effective_rank"] is not None else MISSING,
        ]
    )
    kinds = Table(["module type", "mean ||ΔW||/||W||"], title=f"Adapter {name}: mean relative update per module type")
    kinds.rows = [[k, f"{v * 100:.3f}%"] for k, v in sorted(analysis["by_kind"].items(), key=lambda kv: -kv[1])]
    top = Table(["module", "||ΔW||/||W||", "||ΔW||_F", "||W||_F", "effective rank"], title=f"Adapter {name}: modules changed most")
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
    """The loss of each checkpoint on this data beside the validation loss training logged."""
    t = Table(["run", "step", "loss on this data", "validation loss (training log)"], title="Learning curve")
    for name, c in curve.items():
        val = {v["step"]: v["loss"] for v in c["validation"]}
        steps = sorted({p["step"] for p in c["points"]} | set(val))
        by_step = {p["step"]: p["loss"] for p in c["points"]}
        for s in steps:
            t.add([name, str(s), fmt("loss", by_step.get(s)), fmt("loss", val.get(s))])
    return t


def harness_table(harness: dict) -> Table:
    """lm-evaluation-harness scores per task and metric, one column per model."""
    variants = list(harness["results"])
    t = Table(["task", "metric", *variants], title="lm-evaluation-harness", caption=harness["note"])
    keys = sorted({(task, metric) for res in harness["results"].values() for task, ms in res.items() for metric in ms})
    for task, metric in keys:
        t.add(
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


def training_table(training: dict) -> Table:
    """Per run: its steps, the training loss at the first and last logged step, the best validation loss."""
    t = Table(
        ["run", "steps", "first train loss", "last train loss", "best validation loss (step)", "tokens trained on", "peak lr"],
        title="Training summary",
        caption="From each run's metrics.jsonl: the loss of the logged training steps and the validation passes.",
    )
    for name, run in training.items():
        train, val = run["train"], run["validation"]
        best = min(val, key=lambda v: v["loss"]) if val else None
        lrs = [r["lr"] for r in train if "lr" in r]
        t.add(
            [
                name,
                str(train[-1]["step"]) if train else MISSING,
                fmt("loss", train[0]["loss"]) if train else MISSING,
                fmt("loss", train[-1]["loss"]) if train else MISSING,
                f"{fmt('loss', best['loss'])} ({best['step']})" if best else MISSING,
                f"{train[-1]['tokens']:,}" if train and "tokens" in train[-1] else MISSING,
                f"{max(lrs):.3g}" if lrs else MISSING,
            ]
        )
    return t


def hyperparameter_table(training: dict) -> Table:
    """Every saved setting of each run's config (see :mod:`kielo.evaluate.training`), one column per run;
    settings that differ between runs are marked."""
    names = list(training)
    keys = list(dict.fromkeys(k for run in training.values() for k in run["hyperparameters"]))
    t = Table(["setting", *names], title="Hyperparameters", caption="From each run's saved kielo_config.yaml.")
    for key in keys:
        shown = [_setting(training[n]["hyperparameters"].get(key, MISSING)) for n in names]
        differs = len(set(shown)) > 1
        t.add([key, *shown], [""] + ["differs"] * len(names) if differs else None)
    return t


def _setting(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(repr, value)) if value else "[]"
    return MISSING if value is None else str(value)
