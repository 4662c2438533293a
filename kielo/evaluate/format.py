"""How evaluation numbers are shown: shares as %, chrF 0-100, the loss to 4 places, deltas with intervals."""

from __future__ import annotations

import re

from kielo.evaluate.scores import METRICS_BY_KEY
from kielo.evaluate.stats import excludes_zero

MISSING = "—"
MIN_VERDICT_EXAMPLES = 5


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
    """``[low, high]`` of an interval, in the metric's format."""
    if not ci:
        return MISSING
    return f"[{fmt(key, ci['low'])}, {fmt(key, ci['high'])}]"


def loss_value(summary: dict, key: str = "loss"):
    """The loss (or perplexity) of a summary, ``None`` without one."""
    return summary["loss"][key] if summary["loss"] else None


def value(summary: dict, key: str):
    """A metric of a summary: the loss or a generation metric."""
    return loss_value(summary) if key == "loss" else summary["metrics"].get(key)
