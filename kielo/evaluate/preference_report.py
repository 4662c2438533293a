"""How the held-out preference numbers of a comparison (:mod:`kielo.evaluate.preference`) are shown: a report
section (Markdown, HTML, JSON alike) and the lines ``kielo compare`` prints."""

from __future__ import annotations

from kielo.evaluate.format import MIN_VERDICT_EXAMPLES, MISSING
from kielo.evaluate.preference import BASE, METRICS
from kielo.evaluate.stats import excludes_zero
from kielo.report import Paragraph, Section, Table

LABELS = {key: label for key, label, _ in METRICS}
PERCENT = {key for key, _, percent in METRICS if percent}
# Which way is better for preferring the chosen answer; the rejected answer's log-probability should fall.
HIGHER_IS_BETTER = {"accuracy": True, "margin": True, "logp_accuracy": True, "logps_chosen": True, "logps_rejected": False}


def fmt_value(key: str, v: float | None) -> str:
    """A value in its metric's unit: shares as %, the margin to 3 places, log-probabilities to 2."""
    if v is None:
        return MISSING
    if key in PERCENT:
        return f"{v * 100:.1f}%"
    return f"{v:.3f}" if key == "margin" else f"{v:.2f}"


def fmt_interval(key: str, ci: dict | None) -> str:
    """``value [low, high]``."""
    if not ci:
        return MISSING
    return f"{fmt_value(key, ci['value'])} [{fmt_value(key, ci['low'])}, {fmt_value(key, ci['high'])}]"


def fmt_difference(key: str, ci: dict | None) -> str:
    """``+delta [low, high]``, shares in percentage points."""
    if not ci:
        return MISSING
    scale, digits, unit = (100, 1, " pp") if key in PERCENT else (1, 3 if key == "margin" else 2, "")
    return f"{ci['delta'] * scale:+.{digits}f}{unit} [{ci['low'] * scale:+.{digits}f}, {ci['high'] * scale:+.{digits}f}]"


def verdict(key: str, ci: dict | None) -> str:
    """``better``/``worse`` when a paired interval excludes zero (from :data:`MIN_VERDICT_EXAMPLES` pairs up)."""
    if not excludes_zero(ci) or ci["n"] < MIN_VERDICT_EXAMPLES:
        return ""
    return "better" if (ci["delta"] > 0) == HIGHER_IS_BETTER[key] else "worse"


def summary_table(pref: dict) -> Table:
    """Every model's preference numbers with their intervals, and each paired difference from the baseline."""
    names, baseline = list(pref["models"]), pref["baseline"]
    others = list(pref["deltas"])
    columns = ["metric", *[f"{n} [95% CI]" for n in names], *[f"Δ {n} − {baseline} [95% CI]" for n in others]]
    t = Table(
        columns,
        title=f"Held-out preference pairs: {pref['pairs']} pairs",
        caption=(
            f"Implicit reward = {pref['beta']:g} · (log p_model − log p_{BASE}) of an answer (beta from {pref['beta_from']}); "
            "the margin is the chosen answer's reward minus the rejected one's, and the preference accuracy the share of pairs "
            "with a positive margin (a tie counts half: the base against itself is 50%). Log-probabilities are summed over "
            "an answer's tokens. Intervals: bootstrap over pairs; Δ is paired, 'better'/'worse' where it excludes zero."
        ),
    )
    for key, label, _ in METRICS:
        row = [label, *[fmt_interval(key, pref["models"][n][key]) for n in names]]
        row += [fmt_difference(key, pref["deltas"][n][key]) for n in others]
        t.add(row, [""] * (1 + len(names)) + [verdict(key, pref["deltas"][n][key]) for n in others])
    return t


def kind_table(pref: dict) -> Table | None:
    """Each adapter's preference accuracy within each kind of rejected answer (``rejected_kind``), and the
    log-prob accuracy of every model; None when the pairs are not tagged."""
    names = list(pref["models"])
    kinds = sorted({k for by in pref["by_kind"].values() for k in by})
    if not kinds:
        return None
    adapters = [n for n in names if n != BASE]
    columns = ["rejected kind", "pairs", *[f"accuracy {n}" for n in adapters], *[f"log-prob accuracy {n}" for n in names]]
    t = Table(
        columns, title="Preference accuracy by kind of rejected answer", caption="95% bootstrap intervals over the kind's pairs."
    )
    for kind in kinds:
        first = pref["by_kind"][names[0]][kind]
        row = [kind, str(first["accuracy"]["n"])]
        row += [fmt_interval("accuracy", pref["by_kind"][n][kind]["accuracy"]) for n in adapters]
        row += [fmt_interval("logp_accuracy", pref["by_kind"][n][kind]["logp_accuracy"]) for n in names]
        t.add(row)
    return t


def preference_section(pref: dict | None) -> list[Section]:
    """The comparison report's section on held-out preference pairs (none without them)."""
    if not pref:
        return []
    enc = pref["encoding"]
    blocks = [summary_table(pref)]
    kinds = kind_table(pref)
    if kinds is not None:
        blocks.append(kinds)
    left_out = enc["dropped_no_target"] + enc["dropped_identical"]
    blocks.append(
        Paragraph(
            f"`{pref['path']}`: {enc['total']} pairs, {enc['truncated']} truncated to data.max_length, {left_out} left out "
            f"(no answer token left, or both sides identical after truncation); scored in {pref['seconds']:.0f} s.",
            style="note",
        )
    )
    return [Section("Held-out preference pairs", blocks, anchor="preference")]


def terminal_lines(summary: dict | None) -> list[str]:
    """What ``kielo compare`` prints about the preference pairs: each model's accuracy and margin, then the
    paired differences, from the report's compact summary."""
    if not summary:
        return []
    lines = [f"preference pairs ({summary['pairs']}, beta {summary['beta']:g}, reference {summary['reference']}):"]
    for name, m in summary["models"].items():
        parts = [f"{LABELS[k].split(' (')[0]} {fmt_interval(k, m[k])}" for k in ("accuracy", "margin", "logp_accuracy")]
        chosen, rejected = (fmt_value(k, m[k]["value"] if m[k] else None) for k in ("logps_chosen", "logps_rejected"))
        parts.append(f"log p chosen/rejected {chosen}/{rejected}")
        lines.append(f"  {name}: " + ", ".join(parts))
    for name, d in summary["deltas"].items():
        parts = [f"{k} {fmt_difference(k, d[k])}" for k in ("accuracy", "margin", "logp_accuracy")]
        lines.append(f"  {name} - {summary['baseline']}: " + ", ".join(parts))
    return lines
