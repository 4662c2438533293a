"""Micro-batches laid out the way TRL's SFTTrainer lays them out for Unsloth's users, built with TRL's own code.

Unsloth's SFT path is TRL's ``SFTTrainer`` with its patches. Since Unsloth 2025.12 the trainer turns
``padding_free`` on by itself (``unsloth/trainer.py``: ``_should_auto_padding_free``), and ``packing=True`` packs
the data set first (TRL's ``pack_dataset``, best-fit decreasing into rows of ``max_length``). Either way TRL's
``DataCollatorForLanguageModeling(padding_free=True)`` concatenates a micro-batch into one row with positions
restarting per example and no attention mask, masks the label at each example's first position, and Unsloth's
collator wrapper adds ``packed_seq_lengths`` (``unsloth/utils/packing.py``), from which its attention builds
varlen / block-diagonal masks. Building these with TRL itself keeps the bench honest when TRL changes.
"""

from __future__ import annotations

import torch

from kielo.data.batches import Batch
from kielo.data.encode import IGNORE, Encoded
from kielo.errors import KieloError


def _trl():
    try:
        from datasets import Dataset
        from trl.data_utils import pack_dataset
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except ImportError as e:
        raise KieloError(
            f"Unsloth's batch layouts are built with TRL and datasets ({e})",
            "install trl and datasets (they come with Unsloth: pip install 'kielo[unsloth]')",
        ) from None
    return Dataset, pack_dataset, DataCollatorForLanguageModeling


def _batch(examples: list[dict], pad_id: int, indices: list[int]) -> Batch:
    """TRL's padding-free collation of ``examples`` (rows with ``input_ids``, ``labels`` and, when packed,
    ``seq_lengths``) as a kielo Batch: one row, no padding, positions restarting per example (Unsloth's
    ``packed_seq_lengths`` are recovered from them by :func:`packed_seq_lengths`)."""
    _, _, collator_cls = _trl()
    out = collator_cls(pad_token_id=pad_id, padding_free=True)(examples)
    ids, labels, pos = out["input_ids"], out["labels"], out["position_ids"]
    trained = int((labels[:, 1:] != IGNORE).sum())
    return Batch(ids, labels, None, pos, int(ids.numel()), trained, indices)


def padding_free(items: list[Encoded], mbs: int, pad_id: int) -> list[Batch]:
    """TRL's ``padding_free=True`` without packing: each micro-batch of ``mbs`` examples as one row."""
    out = []
    for i in range(0, len(items), mbs):
        group = items[i : i + mbs]
        rows = [{"input_ids": list(it.input_ids), "labels": list(it.labels)} for it in group]
        out.append(_batch(rows, pad_id, [it.index for it in group]))
    return out


def packed(items: list[Encoded], mbs: int, max_len: int, pad_id: int) -> list[Batch]:
    """TRL's ``packing=True``: the examples packed best-fit decreasing into rows of ``max_len`` (its
    ``pack_dataset``), then ``mbs`` packed rows per micro-batch, collated padding-free into one row."""
    dataset_cls, pack_dataset, _ = _trl()
    data = dataset_cls.from_dict(
        {
            "input_ids": [list(it.input_ids) for it in items],
            "labels": [list(it.labels) for it in items],
            # Which example each token came from: packing keeps list columns aligned with input_ids.
            "example": [[it.index] * len(it.input_ids) for it in items],
        }
    )
    rows = pack_dataset(data, seq_length=max_len, strategy="bfd").to_list()
    out = []
    for i in range(0, len(rows), mbs):
        group = rows[i : i + mbs]
        indices = list(dict.fromkeys(x for r in group for x in r["example"]))
        out.append(_batch([{k: r[k] for k in ("input_ids", "labels", "seq_lengths")} for r in group], pad_id, indices))
    return out


def packed_seq_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """The example lengths of a padding-free row (positions restart at 0 per example), as Unsloth's collator
    wrapper passes them (``packed_seq_lengths``, int32)."""
    starts = torch.nonzero(position_ids.flatten() == 0).flatten()
    ends = torch.cat([starts[1:], torch.tensor([position_ids.numel()], device=starts.device)])
    return (ends - starts).to(torch.int32)
