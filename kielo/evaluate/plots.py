"""The comparison's figures (matplotlib, Agg backend, imported only when plotting).

Each function draws one figure from the report dict and returns it as a report-kit
:class:`~kielo.report.Figure` named after its file (``plots/<name>.png``), or ``None`` when there is
nothing to draw. Metrics on 0-1 are
drawn in points (x 100) beside chrF, so one axis holds them all; the loss has its own. Every bar is
labelled with its value, and the value axes follow the one rule of :func:`kielo.report.figures.bar_limits`:
deltas and bounded scores from 0, losses from just below their smallest bar.
"""

from __future__ import annotations

import logging

from kielo.evaluate.format import safe_name
from kielo.evaluate.scores import GENERATION_METRICS, METRICS_BY_KEY
from kielo.report import Figure
from kielo.report.figures import available, bar_limits, delta_limits, label_bars, to_figure
from kielo.report.figures import pyplot as _pyplot

log = logging.getLogger(__name__)

# Generation metrics with a direction (better/worse) are the ones whose deltas are plotted.
DELTA_METRICS = [x for x in GENERATION_METRICS if x.higher_is_better is not None]


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, name: str) -> Figure:
    return to_figure(fig, name, alt=name.replace("_", " "), dpi=110)


def _points(key: str, value: float) -> float:
    return value * 100 if METRICS_BY_KEY[key].percent else value


def metric_deltas(report: dict) -> Figure | None:
    """Each adapter's delta from the base per metric, with its bootstrap interval."""
    plt = _pyplot()
    names = list(report["deltas"])
    if not names:
        return None
    fig, (ax, ax_loss) = plt.subplots(
        1, 2, figsize=(10, 0.45 * len(DELTA_METRICS) * len(names) + 1.6), gridspec_kw={"width_ratios": [3, 1]}
    )
    height = 0.8 / len(names)
    ends, loss_ends = [], []  # interval ends: each axis is centred on 0 with room for them and the labels
    for j, name in enumerate(names):
        d = report["deltas"][name]["overall"]
        ys, xs, lows, highs = [], [], [], []
        for i, metric in enumerate(DELTA_METRICS):
            ci = d.get(metric.key)
            if ci:
                ys.append(i + j * height)
                xs.append(_points(metric.key, ci["delta"]))
                lows.append(_points(metric.key, ci["delta"] - ci["low"]))
                highs.append(_points(metric.key, ci["high"] - ci["delta"]))
                ends += [_points(metric.key, ci["low"]), _points(metric.key, ci["high"])]
        bars = ax.barh(ys, xs, height=height, xerr=[lows, highs], capsize=3, label=name, alpha=0.8)
        label_bars(ax, bars, xs, "+.2f")
        if d.get("loss"):
            ci = d["loss"]
            bars = ax_loss.barh(
                [j],
                [ci["delta"]],
                height=0.5,
                xerr=[[ci["delta"] - ci["low"]], [ci["high"] - ci["delta"]]],
                capsize=3,
                color=f"C{j}",
                alpha=0.8,
            )
            label_bars(ax_loss, bars, [ci["delta"]], "+.3f")
            loss_ends += [ci["low"], ci["high"]]
    ax.set_xlim(*delta_limits(ends))
    ax_loss.set_xlim(*delta_limits(loss_ends))
    ax.set_yticks(
        [i + height * (len(names) - 1) / 2 for i in range(len(DELTA_METRICS))],
        [x.label + ("" if x.higher_is_better else " (lower is better)") for x in DELTA_METRICS],
    )
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("change from base (points; chrF 0-100, shares in %)")
    ax.legend(loc="lower right", fontsize=8)
    ax_loss.axvline(0, color="black", lw=0.8)
    ax_loss.set_yticks(range(len(names)), names)
    ax_loss.invert_yaxis()
    ax_loss.set_xlabel("loss change (lower is better)")
    fig.suptitle(f"Adapter minus base, {int(report['settings']['level'] * 100)}% paired bootstrap intervals", fontsize=10)
    return _save(fig, "metric_deltas")


def per_task_figure(report: dict):
    """The matplotlib figure of :func:`per_task` (open, for callers that look at its axes), or None with
    fewer than two task types: one bar per model would repeat the summary."""
    plt = _pyplot()
    results = report["results"]
    tasks = sorted({t for res in results.values() for t in res["per_task"]})
    if len(tasks) < 2:
        return None
    # (key, label, full scale): see kielo.report.figures for the axis rule.
    panels = [("loss", "loss (lower is better)", None), ("chrf", "chrF", 100.0), ("task_success", "task success (%)", 100.0)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(18, max(8, 0.45 * len(tasks) * len(results) + 3)), 10), sharex=True)
    width = 0.8 / len(results)
    for ax, (key, label, full_scale) in zip(axes, panels, strict=True):
        drawn = []
        for j, (name, res) in enumerate(results.items()):
            xs, vals = [], []
            for i, t in enumerate(tasks):
                s = res["per_task"].get(t)
                if s is None:
                    continue
                v = (s["loss"] or {}).get("loss") if key == "loss" else s["metrics"].get(key)
                if v is not None:  # a missing value is no bar, not a bar of 0
                    xs.append(i + j * width)
                    vals.append(v if key == "loss" else _points(key, v))
            bars = ax.bar(xs, vals, width=width, label=name, color=f"C{j}")
            label_bars(ax, bars, vals, ".3f" if key == "loss" else ".0f")
            drawn += vals
        ax.set_ylim(*bar_limits(drawn, full_scale))
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(tasks))], tasks, rotation=35, ha="right")
    fig.suptitle(
        "Per task type (tasks without a check show no task-success bar; the loss axis starts near its smallest bar)", fontsize=10
    )
    return fig


def per_task(report: dict) -> Figure | None:
    """Loss, chrF and task success per task type for every model, each bar labelled with its value."""
    fig = per_task_figure(report)
    return None if fig is None else _save(fig, "per_task")


def loss_differences(report: dict) -> Figure | None:
    """Per-example loss change from the base, sorted: left of zero the adapter helped."""
    plt = _pyplot()
    diffs = {n: d for n, d in report["loss_differences"].items() if d.get("n")}
    if not diffs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, d in diffs.items():
        values = sorted(d["deltas"])
        ax.plot(range(len(values)), values, marker=".", lw=1, label=f"{name} (improved {d['improved_share']:.0%})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("examples, sorted by change")
    ax.set_ylabel("loss(adapter) - loss(base)")
    ax.legend(fontsize=8)
    ax.set_title("Per-example response loss change (below zero: better than the base)", fontsize=10)
    return _save(fig, "loss_differences")


def adapter_heatmap(analysis: dict, name: str) -> Figure | None:
    """Relative update norm ||scale·BA|| / ||W|| per layer (rows) and module type (columns)."""
    plt = _pyplot()
    rows = [r for r in analysis["modules"] if r["relative"] is not None and r["layer"] is not None]
    if not rows:
        return None
    layers = sorted({r["layer"] for r in rows})
    kinds = sorted({r["kind"] for r in rows})
    grid = [[float("nan")] * len(kinds) for _ in layers]
    for r in rows:
        grid[layers.index(r["layer"])][kinds.index(r["kind"])] = r["relative"] * 100
    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 2.5, 0.28 * len(layers) + 1.8))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(x) for x in layers])
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="||scale·BA||_F / ||W||_F (%)")
    ax.set_title(f"{analysis['adapter']}: size of the update relative to the base weight", fontsize=10)
    return _save(fig, name)


def adapter_spectrum(analysis: dict, name: str) -> Figure | None:
    """Singular values of the update, normalized to the largest, averaged per module type."""
    plt = _pyplot()
    by_kind: dict[str, list[list[float]]] = {}
    for r in analysis["modules"]:
        s = r["singular_values"]
        if s and s[0] > 0:
            by_kind.setdefault(r["kind"], []).append([x / s[0] for x in s])
    if not by_kind:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, spectra in sorted(by_kind.items()):
        n = min(len(s) for s in spectra)
        avg = [sum(s[i] for s in spectra) / len(spectra) for i in range(n)]
        ax.plot(range(1, n + 1), avg, marker="o", ms=3, label=kind)
    ax.set_xlabel("singular value index")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("σ_i / σ_1 (mean over layers)")
    rank = analysis.get("mean_effective_rank")
    ax.set_title(
        f"{analysis['adapter']}: spectrum of BA (mean effective rank {rank:.1f} of {analysis['rank']})"
        if rank is not None
        else analysis["adapter"],
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, name)


def learning_curve(curve: dict) -> Figure | None:
    """Evaluation loss of each checkpoint, with the validation loss training logged."""
    plt = _pyplot()
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, (name, c) in enumerate(curve.items()):
        pts = [p for p in c["points"] if p["loss"] is not None]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker="o", color=f"C{j}", label=f"{name}: this data")
        if c["validation"]:
            ax.plot(
                [v["step"] for v in c["validation"]],
                [v["loss"] for v in c["validation"]],
                ls="--",
                marker=".",
                color=f"C{j}",
                alpha=0.6,
                label=f"{name}: validation (training log)",
            )
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("response loss")
    ax.legend(fontsize=8)
    ax.set_title("Learning curve", fontsize=10)
    return _save(fig, "learning_curve")


def training_curve(training: dict) -> Figure | None:
    """Each run's training loss per logged step and its validation losses (left), its learning rate (right)."""
    plt = _pyplot()
    runs = {n: r for n, r in training.items() if r["train"] or r["validation"]}
    if not runs:
        return None
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for j, (name, run) in enumerate(runs.items()):
        train = [r for r in run["train"] if r.get("loss") is not None]
        marker = "." if len(train) < 50 else None  # a short run's few points are worth seeing one by one
        ax.plot(
            [r["step"] for r in train], [r["loss"] for r in train], lw=1.2, marker=marker, color=f"C{j}", label=f"{name}: training"
        )
        if run["validation"]:
            val = run["validation"]
            ax.plot(
                [v["step"] for v in val], [v["loss"] for v in val], ls="--", marker="o", color=f"C{j}", label=f"{name}: validation"
            )
        lr = [r for r in run["train"] if "lr" in r]
        ax_lr.plot([r["step"] for r in lr], [r["lr"] for r in lr], color=f"C{j}", label=name)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("response loss")
    ax.legend(fontsize=8)
    ax.set_title("Training curve (metrics.jsonl)", fontsize=10)
    ax_lr.set_xlabel("training step")
    ax_lr.xaxis.set_major_locator(_integer_ticks())
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _save(fig, "training_curve")


def draw_all(report: dict) -> dict[str, Figure]:
    """Every figure of a comparison by name (empty without matplotlib)."""
    if not available():
        log.warning("plots skipped: matplotlib is not installed (pip install 'kielo[eval]')")
        return {}
    out: list[Figure | None] = [
        metric_deltas(report),
        per_task(report),
        loss_differences(report),
        learning_curve(report.get("learning_curve") or {}),
        training_curve(report.get("training") or {}),
    ]
    for name, analysis in (report.get("adapter_analysis") or {}).items():
        stem = f"adapter_{safe_name(name)}"
        out += [adapter_heatmap(analysis, f"{stem}_heatmap"), adapter_spectrum(analysis, f"{stem}_spectrum")]
    return {f.name: f for f in out if f is not None}
