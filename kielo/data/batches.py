"""Micro-batches: padded rows, or packed rows with attention isolated per example.

Packing puts several examples into one row and restarts ``position_ids`` at 0 for each; with no 2D
attention mask, transformers derives a block-diagonal causal mask from those positions (and varlen
kernels use them on GPU), so no example attends to another. Decoders without position ids (BLOOM's ALiBi)
get that mask built from the same positions instead (``kielo.train.packing``). Padding at the end of a
packed row is a segment of its own with labels -100.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from kielo.data.encode import IGNORE, Encoded


@dataclass
class Batch:
    """Tensors for one forward pass plus honest token counts."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None  # padded mode
    position_ids: torch.Tensor | None  # packed mode
    real_tokens: int  # non-padding tokens
    trained_tokens: int  # tokens whose next-token prediction is in the loss
    indices: list[int]  # which examples (Encoded.index) are in it
    # Packed mode: where each segment (example, or a row's end padding) starts in the flattened rows, plus the
    # total (int32, as varlen attention kernels take them), and the longest segment (kielo.model.varlen).
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0

    def to(self, device: torch.device) -> Batch:
        def move(t):
            return t.to(device, non_blocking=True) if t is not None else None

        return Batch(
            move(self.input_ids),
            move(self.labels),
            move(self.attention_mask),
            move(self.position_ids),
            self.real_tokens,
            self.trained_tokens,
            self.indices,
            move(self.cu_seqlens),
            self.max_seqlen,
        )

    def model_inputs(self) -> dict:
        """Inputs for a decoder that takes position ids; ``kielo.train.packing.model_inputs`` fits any decoder."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def segment_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens, longest segment) of packed rows from their restarting position ids (on the host: the bounds
    are known before the batch reaches the GPU, so no attention layer has to wait for them)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max()) if cu.numel() > 1 else 0


def trained_count(labels: list[int]) -> int:
    """Tokens that contribute to the loss: label positions after the first (labels are shifted by one)."""
    if not labels:
        return 0
    # Counted in C, without copying: the masked labels after the first one, subtracted from all after it.
    return len(labels) - 1 - (labels.count(IGNORE) - (labels[0] == IGNORE))


def pack_rows(items: list[Encoded], capacity: int) -> list[list[Encoded]]:
    """First-fit packing of examples (in the given order) into rows of at most ``capacity`` tokens.

    Each example goes into the first row with room for it. A max-tree over the rows' free room finds that
    row in O(log rows); scanning the rows one by one made packing 100,000 examples take minutes.
    """
    size = 1
    while size < max(len(items), 1):
        size *= 2
    # Leaves are rows in order; rows not opened yet have the full capacity, so "no open row fits" finds
    # the next new row. tree[1] is the most room anywhere.
    tree = [0] * size + [capacity] * size
    for i in range(size - 1, 0, -1):
        tree[i] = max(tree[2 * i], tree[2 * i + 1])
    rows: list[list[Encoded]] = []
    for it in items:
        n = len(it.input_ids)
        if tree[1] < n:  # longer than capacity: a row of its own, as first-fit gives it
            r = len(rows)
        else:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= n else 2 * node + 1
            r = node - size
        if r == len(rows):
            rows.append([])
        rows[r].append(it)
        node = r + size
        tree[node] -= n
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows


def collate_padded(items: list[Encoded], pad_id: int) -> Batch:
    """Right-pad examples to the longest in the micro-batch."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        ids[i, :n] = torch.tensor(it.input_ids)
        labels[i, :n] = torch.tensor(it.labels)
        mask[i, :n] = 1
    return Batch(ids, labels, mask, None, int(mask.sum()), sum(trained_count(it.labels) for it in items), [it.index for it in items])


def collate_packed(rows: list[list[Encoded]], pad_id: int) -> Batch:
    """Concatenate each row's examples; positions restart per example so attention stays within it."""
    width = max(sum(len(it.input_ids) for it in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    real = trained = 0
    indices = []
    for i, row in enumerate(rows):
        at = 0
        for it in row:
            n = len(it.input_ids)
            ids[i, at : at + n] = torch.tensor(it.input_ids)
            # The first label of each example is dropped by the shift; mask it so no example is trained to
            # predict its own first token from the previous example's last one.
            lab = list(it.labels)
            lab[0] = IGNORE
            labels[i, at : at + n] = torch.tensor(lab)
            pos[i, at : at + n] = torch.arange(n)
            at += n
            real += n
            trained += trained_count(it.labels)
            indices.append(it.index)
        pos[i, at:] = torch.arange(width - at)  # padding: a segment of its own
    return Batch(ids, labels, None, pos, real, trained, indices, *segment_bounds(pos))


def token_counts(groups: list[list], packing: bool) -> dict[str, int]:
    """Sizes of the micro-batches ``collate_padded`` (or ``collate_packed``) builds from ``groups``, without
    building their tensors (analysis of large data sets): ``slots`` (batch x width positions), ``real``
    (non-padding) and ``trained`` tokens. Equal to summing ``input_ids.numel()``, ``real_tokens`` and
    ``trained_tokens`` over those batches; tests/test_analyze.py checks it against the collated batches.
    """
    slots = real = trained = 0
    for group in groups:
        rows = group if packing else [[it] for it in group]
        lengths = [sum(len(it.input_ids) for it in row) for row in rows]
        slots += len(rows) * max(lengths)
        real += sum(lengths)
        trained += sum(trained_count(it.labels) for row in rows for it in row)
    return {"slots": slots, "real": real, "trained": trained}


class BatchLayout:
    """The deterministic order of micro-batches for every epoch, from the seed.

    A run's position is just the number of micro-batches consumed, which makes resuming exact.
    """

    def __init__(
        self,
        items: list[Encoded],
        micro_batch_size: int,
        pad_id: int,
        seed: int,
        packing: bool = False,
        max_length: int = 1024,
        shuffle: bool = True,
    ):
        if not items:
            raise ValueError("no examples to batch")
        self.items = items
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.packing = packing
        self.max_length = max_length
        self.shuffle = shuffle
        if packing:
            # Pack once (from a seeded order) so every epoch has the same number of micro-batches; epochs
            # then shuffle whole rows.
            order = list(items)
            if shuffle:
                random.Random(seed).shuffle(order)
            self.units: list = pack_rows(order, max_length)
        else:
            self.units = list(items)
        self.per_epoch = -(-len(self.units) // micro_batch_size)
        self._cache: dict[int, list[list]] = {}

    def _epoch_groups(self, epoch: int) -> list[list]:
        if epoch not in self._cache:
            order = list(self.units)
            if self.shuffle:
                random.Random(self.seed * 1000003 + epoch + 1).shuffle(order)
            mbs = self.micro_batch_size
            self._cache = {epoch: [order[i : i + mbs] for i in range(0, len(order), mbs)]}
        return self._cache[epoch]

    def groups(self, epoch: int = 0) -> list[list]:
        """The micro-batches of ``epoch`` before collation: lists of examples (or of packed rows)."""
        return list(self._epoch_groups(epoch))

    def batch(self, cursor: int) -> Batch:
        """The micro-batch at global position ``cursor`` (epochs follow one another)."""
        epoch, offset = divmod(cursor, self.per_epoch)
        group = self._epoch_groups(epoch)[offset]
        return collate_packed(group, self.pad_id) if self.packing else collate_padded(group, self.pad_id)

    def all_batches(self) -> list[Batch]:
        """One pass in order (evaluation)."""
        return [self.batch(i) for i in range(self.per_epoch)]


def eval_batch_size(config) -> int:
    """Examples per batch when only the loss is computed: no gradients or optimizer state, so bigger than a
    training micro-batch; a packed training row holds ~4 examples, so 4 padded examples per packed row."""
    t = config.training
    return t.micro_batch_size * (4 if config.data.packing else 2)
