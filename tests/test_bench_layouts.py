"""The bench's Unsloth layouts (TRL's padding-free and packed batches, built with TRL) and its MFU arithmetic."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")


def _examples(lengths, prompt=1):
    from kielo.data.encode import IGNORE, Encoded

    out, start = [], 0
    for i, n in enumerate(lengths):
        ids = list(range(start, start + n))
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:], prompt, n - prompt, index=i))
        start += n
    return out


def test_padding_free_rows_are_what_trls_collator_gives_unsloth():
    from kielo.bench.data import micro_batches
    from kielo.bench.trl_layout import packed_seq_lengths
    from kielo.data.batches import trained_count

    items = _examples([5, 3, 4], prompt=2)
    batches = micro_batches(items, "padding_free", mbs=2, max_len=16, pad_id=99)
    assert [tuple(b.input_ids.shape) for b in batches] == [(1, 8), (1, 4)]
    first = batches[0]
    assert first.input_ids[0].tolist() == items[0].input_ids + items[1].input_ids  # no padding, no reordering
    assert first.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert first.attention_mask is None
    # the label at each example's first position is masked, so no example predicts the next one's start
    assert first.labels[0, 5] == -100 and first.labels[0, 7] == items[1].labels[2]
    assert packed_seq_lengths(first.position_ids).tolist() == [5, 3]
    assert first.trained_tokens == trained_count(items[0].labels) + trained_count(items[1].labels)
    assert [b.indices for b in batches] == [[0, 1], [2]]


def test_trl_packing_packs_best_fit_decreasing_and_keeps_every_token():
    from kielo.bench.data import micro_batches
    from kielo.bench.trl_layout import packed_seq_lengths

    items = _examples([7, 2, 5, 3, 6, 1, 4])
    batches = micro_batches(items, "trl_packed", mbs=1, max_len=8, pad_id=99)
    # best-fit decreasing into rows of 8: [7,1] [6,2] [5,3] [4] (first-fit in order would give other rows)
    assert [packed_seq_lengths(b.position_ids).tolist() for b in batches] == [[7, 1], [6, 2], [5, 3], [4]]
    tokens = sorted(t for b in batches for t in b.input_ids[0].tolist())
    assert tokens == sorted(t for it in items for t in it.input_ids)
    assert sorted(i for b in batches for i in b.indices) == list(range(len(items)))
    two = micro_batches(items, "trl_packed", mbs=2, max_len=8, pad_id=99)
    assert [b.input_ids.shape[1] for b in two] == [16, 12]  # two packed rows per micro-batch, one flat row


def test_attended_pairs_and_step_flops_count_by_hand():
    from kielo.bench.flops import Geometry, attended_pairs, step_flops

    assert attended_pairs(4, None) == 10 and attended_pairs(4, 8) == 10
    assert attended_pairs(5, 2) == 3 + 3 * 2  # tokens 0,1 see 1,2 keys; the rest see 2
    geo = Geometry(frozen_weights=100, lora_weights=10, attention_width=8, windows=(None, 2))
    want = 7 * (4 * 100 + 6 * 10) + 12 * 8 * (attended_pairs(3, None) + attended_pairs(3, 2) + 10 + 7)
    assert step_flops(geo, [3, 4]) == want


def test_llama8b_geometry_matches_its_published_size():
    from transformers import LlamaConfig

    from kielo.bench.flops import geometry
    from kielo.bench.shapes import SHAPES

    geo = geometry(LlamaConfig(**SHAPES["llama8b"]))
    # 8.03B parameters less the 0.525B embedding: 7.50B in linear weights (head included)
    assert 7.45e9 < geo.frozen_weights < 7.55e9
    assert 41e6 < geo.lora_weights < 43e6  # r=16 on all seven projections of 32 layers: 42M
    assert geo.attention_width == 4096 and geo.windows == (None,) * 32
