"""matplotlib for report figures, imported only when a figure is drawn (it is the optional ``eval`` extra)."""

from __future__ import annotations

import io
from functools import lru_cache

from kielo.report.blocks import Figure


@lru_cache(maxsize=1)
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only: no display on servers and in tests)."""
    import matplotlib

    matplotlib.use("Agg")  # must be chosen before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """Whether matplotlib is installed."""
    try:
        pyplot()
    except ImportError:
        return False
    return True


def to_figure(fig, name: str, alt: str = "", dpi: int = 100, tight: bool = True) -> Figure:
    """A matplotlib figure as a :class:`Figure` (PNG bytes); the matplotlib figure is closed."""
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return Figure(name, buf.getvalue(), alt=alt)


# The value axis of every bar chart follows one rule, so two reports read alike:
# - a bounded score (a share in %, chrF 0-100) is drawn on its whole scale from 0: its zero means something,
#   and 97% next to 98% should look nearly equal, as it is; the label on each bar gives the exact value;
# - a change (a delta) is drawn from 0, the line of no change;
# - an unbounded quantity (a loss) starts just below its smallest bar, since 0 is a value no model reaches
#   and from there bars of 0.97 and 0.98 would look the same: the axis spans the values with a margin of
#   half their spread (at least 2.5% of the largest), and starts at 0 only when that margin reaches it.
def bar_limits(values: list[float], full_scale: float | None = None) -> tuple[float, float]:
    """The value axis of a bar chart of ``values`` by the rule above; ``full_scale`` is a bounded score's top
    (e.g. 100 for shares in %), None for an unbounded quantity. Room is left above the bars for their labels."""
    if full_scale is not None:
        return 0.0, full_scale + full_scale / 10
    finite = [v for v in values if v == v]  # NaN: a missing bar
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    margin = max(high - low, 0.05 * max(abs(high), abs(low)), 1e-9) / 2
    bottom = low - margin if low - margin > 0 or low < 0 else 0.0
    return bottom, high + margin


def delta_limits(ends: list[float]) -> tuple[float, float]:
    """The value axis of a chart of changes: centred on 0 (no change), wide enough for every interval end in
    ``ends`` and the labels beside the bars."""
    reach = max((abs(v) for v in ends if v == v), default=0.0)
    reach = reach * 1.35 if reach > 0 else 1.0
    return -reach, reach


def label_bars(ax, bars, values: list[float], spec: str = ".3g") -> None:
    """Write each bar's value (``values``, formatted with ``spec``) at its end."""
    ax.bar_label(bars, labels=[format(v, spec) for v in values], fontsize=7, padding=2)
