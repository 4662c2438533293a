"""Preference pairs as tokens and micro-batches.

Each side of a pair is encoded by the same :class:`~kielo.data.encode.Encoder` as an SFT example (template,
prompt masking, end token, ``data.max_length``), training only the final answer. A micro-batch of B pairs is
one padded batch of 2B rows, the B chosen rows first, then the B rejected ones in the same order, so both
sides go through one forward. Where packed rows attend through varlen attention (``training.attention``,
``kielo.model.varlen``) the 2B sides are one packed row instead, in the same order: no padding and no mask, each
side attending only to itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from kielo.data.batches import Batch, BatchLayout, collate_packed, collate_padded
from kielo.data.encode import IGNORE, Encoded, Encoder


@dataclass
class Pair:
    """One encoded pair; ``index`` is its position in the source list (the key of cached reference values)."""

    chosen: Encoded
    rejected: Encoded
    index: int
    source: str = ""

    @property
    def length(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class PairStats:
    """What encoding did to a preference data set (the keys of :class:`~kielo.data.encode.EncodeStats`, per pair)."""

    total: int = 0
    kept: int = 0
    truncated: int = 0  # pairs with either side truncated
    truncated_chosen: int = 0
    truncated_rejected: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0
    dropped_identical: int = 0  # both sides the same tokens after truncation: nothing to prefer
    tokens_lost: int = 0
    double_bos: int = 0
    dropped_sources: list[str] = field(default_factory=list)

    def report(self) -> dict:
        out = asdict(self)
        out.pop("dropped_sources")
        return out


def encode_pair_sides(encoder: Encoder, pair, index: int) -> tuple[Encoded, Encoded]:
    """Both sides of a :class:`~kielo.data.preference.PreferenceExample`, untruncated, final answer trained."""
    return (
        encoder.encode(pair.example("chosen"), index, last_answer_only=True),
        encoder.encode(pair.example("rejected"), index, last_answer_only=True),
    )


def encode_pairs(encoder: Encoder, pairs: list) -> tuple[list[Pair], PairStats]:
    """Encode and fit (``data.max_length``) every pair; a pair one of whose sides is dropped is dropped."""
    stats = PairStats(total=len(pairs))
    out = []
    for i, p in enumerate(pairs):
        chosen, rejected = encode_pair_sides(encoder, p, i)
        stats.double_bos += chosen.double_bos
        lengths = len(chosen.input_ids) + len(rejected.input_ids)
        fc, fr = encoder.fit(chosen), encoder.fit(rejected)
        if fc is None or fr is None:
            if encoder.overlong == "drop":
                stats.dropped_overlong += 1
            else:
                stats.dropped_no_target += 1
            stats.tokens_lost += lengths
            stats.dropped_sources.append(p.source)
            continue
        if fc.input_ids == fr.input_ids:
            stats.dropped_identical += 1
            stats.tokens_lost += lengths
            stats.dropped_sources.append(p.source)
            continue
        stats.truncated_chosen += bool(fc.truncated)
        stats.truncated_rejected += bool(fr.truncated)
        stats.truncated += bool(fc.truncated or fr.truncated)
        stats.tokens_lost += fc.truncated + fr.truncated
        out.append(Pair(fc, fr, i, p.source))
    stats.kept = len(out)
    return out, stats


@dataclass
class PairBatch(Batch):
    """A batch of pairs: rows ``[:pairs]`` chosen, ``[pairs:]`` rejected; ``reference`` (pairs, 2) holds cached
    reference log-probabilities (chosen, rejected) when the run uses them."""

    pairs: int = 0
    reference: torch.Tensor | None = None
    # Packed: which side (0..2B-1, chosen sides first) each position of the row holds; padded: None (row i is side i).
    sides: torch.Tensor | None = None

    def to(self, device: torch.device) -> PairBatch:
        moved = Batch.to(self, device)
        ref = self.reference.to(device) if self.reference is not None else None
        sides = self.sides.to(device, non_blocking=True) if self.sides is not None else None
        fields = {k: getattr(moved, k) for k in Batch.__dataclass_fields__}
        return PairBatch(**fields, pairs=self.pairs, reference=ref, sides=sides)

    def chosen_trained_tokens(self) -> int:
        """Trained tokens of the chosen answers (ORPO's answer loss is their mean)."""
        trained = self.labels[:, 1:] != IGNORE
        if self.sides is None:
            return int(trained[: self.pairs].sum())
        return int((trained & (self.sides[:, 1:] < self.pairs)).sum())


def collate_pairs(pairs: list[Pair], pad_id: int, reference: torch.Tensor | None = None, packed: bool = False) -> PairBatch:
    """The pairs' chosen sides followed by their rejected sides: one padded row each, or all in one packed row."""
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    b = collate_packed([sides], pad_id) if packed else collate_padded(sides, pad_id)
    ref = reference[[p.index for p in pairs]] if reference is not None else None
    fields = {k: getattr(b, k) for k in Batch.__dataclass_fields__}
    fields["indices"] = [p.index for p in pairs]
    which = None
    if packed:
        lengths = torch.tensor([len(s.input_ids) for s in sides])
        which = torch.repeat_interleave(torch.arange(len(sides)), lengths).unsqueeze(0)
    return PairBatch(**fields, pairs=len(pairs), reference=ref, sides=which)


class PairLayout(BatchLayout):
    """:class:`BatchLayout`'s deterministic order over pairs (``micro_batch_size`` pairs a micro-batch, whose sides
    are one packed row when ``packed``); ``reference`` is set once cached reference log-probabilities exist (row
    i = the pair whose ``index`` is i)."""

    def __init__(self, items: list[Pair], micro_batch_size: int, pad_id: int, seed: int, shuffle: bool = True, packed: bool = False):
        super().__init__(items, micro_batch_size, pad_id, seed, packing=False, shuffle=shuffle)
        self.reference: torch.Tensor | None = None
        self.packed = packed

    def batch(self, cursor: int) -> PairBatch:
        epoch, offset = divmod(cursor, self.per_epoch)
        return collate_pairs(self._epoch_groups(epoch)[offset], self.pad_id, self.reference, self.packed)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pair_statistics(encoder: Encoder, pairs: list) -> dict:
    """Per-pair numbers for data analysis: answer lengths in tokens (chosen - rejected), the answers' shared
    prefix in tokens, and how many pairs ``data.max_length`` truncates on either side."""
    diffs, prefixes, chosen_len, rejected_len = [], [], [], []
    trunc_c = trunc_r = trunc_any = 0
    for i, p in enumerate(pairs):
        c, r = encode_pair_sides(encoder, p, i)
        ca, ra = c.input_ids[c.prompt_tokens :], r.input_ids[r.prompt_tokens :]
        chosen_len.append(len(ca))
        rejected_len.append(len(ra))
        diffs.append(len(ca) - len(ra))
        prefixes.append(shared_prefix(ca, ra))
        over_c, over_r = len(c.input_ids) > encoder.max_length, len(r.input_ids) > encoder.max_length
        trunc_c += over_c
        trunc_r += over_r
        trunc_any += over_c or over_r
    return {
        "pairs": len(pairs),
        "chosen_answer_tokens": chosen_len,
        "rejected_answer_tokens": rejected_len,
        "length_difference": diffs,
        "shared_prefix_tokens": prefixes,
        "truncated_chosen": trunc_c,
        "truncated_rejected": trunc_r,
        "truncated_either": trunc_any,
        "chosen_longer": sum(d > 0 for d in diffs),
        "max_length": encoder.max_length,
    }


def _spread(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731 - a nearest-rank percentile
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 2), "median": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def pair_summary(stats: dict) -> dict:
    """:func:`pair_statistics` with each per-pair list reduced to its spread (min, mean, median, p95, max)."""
    lists = ("chosen_answer_tokens", "rejected_answer_tokens", "length_difference", "shared_prefix_tokens")
    return {k: _spread(v) if k in lists else v for k, v in stats.items()}


def preference_file(path) -> bool:
    """Whether a data file holds preference pairs (its first row has ``chosen`` or ``rejected``)."""
    from kielo.data.preference import is_preference_row
    from kielo.data.records import read_rows

    _, rows = read_rows(path, "DATA_FILE")
    return bool(rows) and is_preference_row(rows[0][1])
