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
