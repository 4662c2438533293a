"""Trained, masked and padding tokens of the micro-batches training builds, with and without packing.

The micro-batches come from training's own :class:`~kielo.data.batches.BatchLayout` (same seed, same
``micro_batch_size``, same packing), and their sizes from :func:`~kielo.data.batches.token_counts`, which
equals what the collate functions put in the tensors. Length grouping is not a training option yet; it
is shown as the padding it would save, grouped the way transformers' ``group_by_length`` does.
"""

from __future__ import annotations

import random

from kielo.data.batches import BatchLayout, token_counts
from kielo.data.encode import Encoded

MEGABATCH = 50  # micro-batches per length-sorted megabatch, as in transformers' LengthGroupedSampler


def length_grouped(items: list[Encoded], micro_batch_size: int, seed: int) -> list[list[Encoded]]:
    """Shuffle, then sort each megabatch by length so micro-batches hold examples of similar length."""
    order = list(items)
    random.Random(seed).shuffle(order)
    size = micro_batch_size * MEGABATCH
    groups = []
    for at in range(0, len(order), size):
        mega = sorted(order[at : at + size], key=lambda it: len(it.input_ids), reverse=True)
        groups += [mega[i : i + micro_batch_size] for i in range(0, len(mega), micro_batch_size)]
    return groups


def _shares(counts: dict[str, int], micro_batches: int) -> dict:
    slots, real, trained = counts["slots"], counts["real"], counts["trained"]
    out = {"micro_batches": micro_batches, "slots": slots, "trained": trained, "masked": real - trained, "padding": slots - real}
    for key in ("trained", "masked", "padding"):
        out[f"{key}_share"] = round(out[key] / slots, 4) if slots else 0.0
    return out


def token_budget(items: list[Encoded], micro_batch_size: int, pad_id: int, seed: int, max_length: int, packing: bool) -> dict:
    """One epoch's token counts in each batching mode; ``training_uses`` names the configured one.

    ``trained`` tokens are in the loss; ``masked`` are in the batch but not the loss (prompts, template
    text, each example's first token); ``padding`` fills rows to the longest in the micro-batch.
    """
    if not items:
        return {"training_uses": "packed" if packing else "padded", "modes": {}}
    modes = {}
    for name, pack in (("padded", False), ("packed", True)):
        groups = BatchLayout(items, micro_batch_size, pad_id, seed, packing=pack, max_length=max_length).groups(0)
        modes[name] = _shares(token_counts(groups, pack), len(groups))
    groups = length_grouped(items, micro_batch_size, seed)
    modes["length_grouped"] = _shares(token_counts(groups, False), len(groups))
    return {"training_uses": "packed" if packing else "padded", "micro_batch_size": micro_batch_size, "modes": modes}
