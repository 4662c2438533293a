"""A comparison's numbers in the model card of each kielo adapter it measured (the card's held-out section).

The card holds the latest comparison of its adapter: the data (path and hash), the base it was compared
with, and each headline metric for the base and the adapter with the adapter's difference and its 95%
interval. A card that can't be written is a warning: the comparison's own report is what was asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kielo.errors import KieloError
from kielo.report.blocks import Block, KeyValues, Table
from kielo.resources import locate
from kielo.runs.card import sha256_of, update_held_out

log = logging.getLogger(__name__)

# (summary key, label, scale, format, unit of the difference)
METRICS = (
    ("loss", "response loss", 1, ".4f", ""),
    ("perplexity", "perplexity", 1, ".2f", None),
    ("chrf", "chrF", 1, ".1f", ""),
    ("task_success", "task success", 100, ".1f", " points"),
    ("end_token", "answers ending with the end token", 100, ".1f", " points"),
    ("expected_language", "answers in the expected language", 100, ".1f", " points"),
)


def _shown(value, scale: int, spec: str) -> str:
    if value is None:
        return "—"
    return format(value * scale, spec) + ("%" if scale == 100 else "")


def _delta(d: dict | None, scale: int, spec: str, unit: str | None) -> str:
    if unit is None or not d:  # perplexity follows from the loss: its difference is the loss's
        return "—"
    f = "+" + spec
    return f"{format(d['delta'] * scale, f)}{unit} [{format(d['low'] * scale, f)}, {format(d['high'] * scale, f)}]"


def held_out_blocks(comparison: dict, variant: str) -> list[Block]:
    """What the card of ``variant`` (an adapter of :func:`kielo.evaluate.run.compare`'s result) shows."""
    summary, data, model = comparison["summary"], comparison["data"], comparison["model"]
    base, mine = summary["models"][summary["base"]], summary["models"][variant]
    deltas = summary["deltas"].get(variant) or {}
    file = locate(data["path"])
    bits = f"{model['quantization_bits']}-bit" if model["quantization_bits"] else "unquantized"
    items = [
        ("data", f"`{data['path']}`" + (f" (sha256 {sha256_of(file)})" if file.is_file() else "")),
        ("examples", f"{mine['loss_examples']} with a loss, {mine['generated_examples']} generated"),
        ("compared with", f"the base `{model['name']}` ({bits}) without the adapter, same data and settings"),
        (
            "decoding",
            f"{comparison['settings']['decoding']}, up to {comparison['settings']['generation']['max_new_tokens']} new tokens",
        ),
        ("measured", comparison["created"]),
    ]
    if comparison.get("files", {}).get("html"):
        items.append(("report", f"`{comparison['files']['html']}`"))
    level = f"{summary['level']:.0%}"
    table = Table(["metric", "base", "this adapter", f"adapter − base [{level} CI]"])
    for key, label, scale, spec, unit in METRICS:
        if base.get(key) is None and mine.get(key) is None:
            continue
        table.add(
            [label, _shown(base.get(key), scale, spec), _shown(mine.get(key), scale, spec), _delta(deltas.get(key), scale, spec, unit)]
        )
    return [KeyValues(items), table]


def record_held_out(comparison: dict) -> list[str]:
    """Write ``comparison``'s numbers into the card of every kielo adapter it compared; returns the cards."""
    written = []
    for v in comparison["variants"][1:]:
        if not v.get("adapter"):
            continue
        try:
            card = update_held_out(Path(v["adapter"]), held_out_blocks(comparison, v["name"]))
        except (KieloError, OSError) as e:
            log.warning("could not update the model card of %s: %s", v["adapter"], e)
            continue
        if card is not None:
            written.append(str(card))
            log.info("held-out numbers written into %s", card)
    return written
