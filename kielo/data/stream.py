"""Micro-batches from a streamed data set (``data.streaming``): rows are read, validated, encoded and batched
as training reaches them, so a set larger than memory never has to be loaded.

A stream has no length and no random access, so the run's position is where the next micro-batch starts:
``(epoch, row)``. Each micro-batch depends only on the rows from its start on (padded: the next
``micro_batch_size`` examples that fit ``data.max_length``; packed: rows filled in stored order, an example
that does not fit the open row opening the next one), so a resumed run that skips to that row builds the
same micro-batches as a run that never stopped. Rows come in stored order: a stream is not shuffled
(shuffle the set once, before training, for a random order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from kielo.data.batches import Batch, collate_packed, collate_padded
from kielo.data.encode import Encoded
from kielo.errors import KieloError

log = logging.getLogger(__name__)

# (where, row) pairs from row N of the set on
OpenRows = Callable[[int], Iterator[tuple[str, Any]]]
# A row to its encoded example, or None when data.max_length drops it
EncodeRow = Callable[[str, Any, int], "Encoded | None"]


class StreamLayout:
    """Micro-batches read in order from ``open_rows``; ``batch(cursor)`` must be asked in order from the
    cursor :meth:`seek` set (the training loop does), and :meth:`position` is saved in checkpoints."""

    per_epoch = None  # unknown until the stream ends: training.max_steps sets the length of the run

    def __init__(self, open_rows: OpenRows, encode_row: EncodeRow, micro_batch_size: int, pad_id: int, packing: bool, max_length: int):
        self.open_rows = open_rows
        self.encode_row = encode_row
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id
        self.packing = packing
        self.max_length = max_length
        self.epoch, self.row, self.cursor = 0, 0, 0
        self._rows: Iterator[tuple[int, Encoded]] | None = None
        self._peeked: tuple[int, Encoded] | None = None

    def position(self) -> dict:
        """Where the next micro-batch starts: plain ints, so a checkpoint's state file loads without pickle."""
        return {"epoch": self.epoch, "row": self.row, "cursor": self.cursor}

    def seek(self, position: dict) -> None:
        """Continue from a :meth:`position` (a resumed run): the stream is opened again at that row."""
        self.epoch, self.row, self.cursor = int(position["epoch"]), int(position["row"]), int(position["cursor"])
        self._rows, self._peeked = None, None

    def _encoded(self) -> Iterator[tuple[int, Encoded]]:
        for index, (where, row) in enumerate(self.open_rows(self.row), self.row):
            enc = self.encode_row(where, row, index)
            if enc is not None:
                yield index, enc

    def _next(self) -> tuple[int, Encoded] | None:
        """The next example that fits, with its row number; None at the end of the set."""
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        if self._rows is None:
            self._rows = self._encoded()
        return next(self._rows, None)

    def _gather(self) -> list:
        """The next micro-batch's examples (padded) or rows of examples (packed); [] at the end of the set.
        Leaves ``self.row`` at the first row after them."""
        units: list = []
        used = 0
        while True:
            item = self._next()
            if item is None:
                self.row = None  # the end: the next batch starts a new epoch
                return units
            index, enc = item
            n = len(enc.input_ids)
            if not self.packing:
                units.append(enc)
                if len(units) == self.micro_batch_size:
                    self.row = index + 1
                    return units
                continue
            if units and used + n <= self.max_length:
                units[-1].append(enc)
                used += n
            elif len(units) < self.micro_batch_size:
                units.append([enc])
                used = n
            else:  # a full micro-batch: this example starts the next one
                self._peeked = item
                self.row = index
                return units

    def batch(self, cursor: int) -> Batch:
        """The micro-batch at ``cursor``, the next one in order."""
        if cursor != self.cursor:
            raise RuntimeError(f"a stream is read in order: micro-batch {cursor} asked, {self.cursor} is next")
        start = self.row
        units = self._gather()
        if not units:  # the set ended exactly at a batch boundary: start the next epoch
            if start == 0:
                raise KieloError("the streamed training set holds no example that fits data.max_length", "check data.train")
            self._next_epoch()
            units = self._gather()
        ended = self.row is None
        if ended:
            self._next_epoch()
        self.cursor += 1
        return collate_packed(units, self.pad_id) if self.packing else collate_padded(units, self.pad_id)

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.row = 0
        self._rows, self._peeked = None, None
        log.info("the streamed training set ended; epoch %d starts from its first row", self.epoch)


def stream_layout(config, encoder, pad_id: int) -> StreamLayout:
    """The :class:`StreamLayout` of ``data.train`` for ``config``, encoding with ``encoder``."""
    from kielo.data.records import row_to_example
    from kielo.data.sources import ReadOptions, dataset_rows, rename_columns, resolve_source

    d, t = config.data, config.training
    options = ReadOptions.of(d)
    source = resolve_source(d.train, options, "data.train")

    def open_rows(skip: int) -> Iterator[tuple[str, Any]]:
        return dataset_rows(source, options, streaming=True, skip=skip)

    def encode_row(where: str, row: Any, index: int) -> Encoded | None:
        example = row_to_example(rename_columns(row, options.columns), where, d.system_prompt)
        return encoder.fit(encoder.encode(example, index))

    return StreamLayout(open_rows, encode_row, t.micro_batch_size, pad_id, d.packing, d.max_length)
