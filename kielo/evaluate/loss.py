"""Response-only loss per example: the tokens training scores, through kielo's one encoder and loss.

Evaluation always masks the prompt (whatever ``data.train_on_prompt`` says) and truncates overlong
examples instead of dropping them, so every example with a reference gets a number. A multi-turn
conversation is scored on all of its assistant turns, as training scores it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch

from kielo.data.batches import collate_padded
from kielo.data.encode import Encoder
from kielo.data.records import Example
from kielo.evaluate.dataset import has_reference
from kielo.model.bundle import Bundle
from kielo.train.loss import per_example_loss

log = logging.getLogger(__name__)


def eval_encoder(bundle: Bundle) -> Encoder:
    """The bundle's tokenizer and template with evaluation's masking: responses only, truncate."""
    return Encoder(bundle.tokenizer, bundle.template, bundle.config.data.max_length, overlong="truncate", train_on_prompt=False)


def encode_for_loss(bundle: Bundle, examples: list[Example]) -> tuple[list, dict]:
    """Encode the examples that have a reference, once for every model of a comparison.

    ``Encoded.index`` is the example's position in ``examples``.
    """
    keep = [i for i, ex in enumerate(examples) if has_reference(ex)]
    encoded, stats = eval_encoder(bundle).encode_all([examples[i] for i in keep])
    for enc in encoded:
        enc.index = keep[enc.index]
    report = asdict(stats)
    report.pop("dropped_sources")
    if stats.truncated or stats.dropped_no_target:
        log.warning(
            "%d of %d examples are longer than data.max_length=%d: %d truncated, %d without any answer token left (no loss)",
            stats.truncated + stats.dropped_no_target,
            stats.total,
            bundle.config.data.max_length,
            stats.truncated,
            stats.dropped_no_target,
        )
    return encoded, report


@torch.no_grad()
def example_losses(bundle: Bundle, encoded: list, batch_size: int, progress=None) -> dict[int, tuple[float, int]]:
    """``{index: (loss sum, trained tokens)}`` for every encoded example, with the bundle's current model."""
    pad = bundle.tokenizer.pad_token_id
    # Similar lengths together: padding costs compute, and results don't depend on the grouping.
    order = sorted(encoded, key=lambda e: len(e.input_ids))
    out: dict[int, tuple[float, int]] = {}
    for at in range(0, len(order), batch_size):
        batch = collate_padded(order[at : at + batch_size], pad).to(bundle.device)
        for index, (loss_sum, tokens) in zip(batch.indices, per_example_loss(bundle.model, batch), strict=True):
            out[index] = (loss_sum, tokens)
        if progress is not None:
            progress(len(batch.indices))
    return out
