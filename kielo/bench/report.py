"""The bench's results table (one row per case) and the versions it records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column of the table: its header, width and how a result row fills it (``stock``: stock's tok/s by
    data, for ratios)."""

    header: str
    width: int
    cell: Callable[[dict, dict], str]
    left: bool = False


def _cosines(values: list[float]) -> str:
    return ",".join(f"{c:.5f}" for c in values) or "-"


COLUMNS = [
    Column("variant", 18, lambda r, s: r["variant"], left=True),
    Column("case", 16, lambda r, s: r["case"], left=True),
    Column("tok/s", 7, lambda r, s: str(r["tok_s"])),
    Column("vs stock", 8, lambda r, s: f"{r['tok_s'] / s[r['data']]:.2f}x" if r["data"] in s else "-"),
    Column("MFU", 5, lambda r, s: f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"),
    Column("peak GiB", 8, lambda r, s: f"{r['peak_gib'] or 0:.2f}"),
    Column("planned", 7, lambda r, s: f"{r['planned_gib']:.2f}" if r.get("planned_gib") is not None else "-"),
    Column("first s", 7, lambda r, s: f"{r['first_step_s']:.2f}"),
    Column("step s", 7, lambda r, s: f"{r['median_step_s']:.3f}"),
    Column("pad %", 5, lambda r, s: f"{r['padding_pct']:.1f}"),
    Column("max |dL|", 8, lambda r, s: f"{r['max_loss_delta']:.4f}" if "max_loss_delta" in r else "-"),
    Column("grad cos", 17, lambda r, s: _cosines(r.get("grad_cosine", []))),
    Column("cos vs ref", 17, lambda r, s: _cosines(r.get("grad_cosine_ref", []))),
]


def _fit(text: str, column: Column) -> str:
    return f"{text:{'<' if column.left else '>'}{column.width}}"


def table(results: list[dict], columns: list[Column] = COLUMNS) -> str:
    """The results as a fixed-width table; a failed case shows its error after variant and case."""
    head = " ".join(_fit(c.header, c) for c in columns)
    lines = [head, "-" * len(head)]
    stock = {r["data"]: r["tok_s"] for r in results if r.get("variant") == "stock" and "tok_s" in r}
    for r in results:
        if "error" in r:
            lines.append(f"{_fit(r['variant'], columns[0])} {_fit(r['case'], columns[1])} ERROR {r['error'][:90]}")
            continue
        lines.append(" ".join(_fit(c.cell(r, stock), c) for c in columns))
    return "\n".join(lines)


def versions() -> dict:
    """Versions of the packages the stacks run on, and the GPU's name."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton", "unsloth"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return out
