"""kielo's chunking of Liger's fused loss head: the chunk_mem_const it passes makes Liger's own sizing rule
(liger-kernel 0.8.5's fused_linear_cross_entropy_forward) give the byte-bounded chunk kielo's planner counts."""

from __future__ import annotations

import pytest

from kielo.plan.memory import FUSED_CHUNK_BYTES, fused_chunk_rows
from kielo.train.loss import liger_chunk_mem_const


def _liger_rows(tokens: int, hidden: int, vocab: int, chunk_mem_const: int) -> int:
    """Liger's rule, written out: inc = ceil(V / (c * H)), rows = next power of two of ceil(BT / inc), at most BT."""
    inc = -(-vocab // (chunk_mem_const * hidden))
    rows = -(-tokens // inc)
    return min(1 << (rows - 1).bit_length(), tokens)


@pytest.mark.parametrize(
    "tokens, hidden, vocab",
    [(4096, 1152, 262144), (4096, 4096, 128256), (4096, 2560, 262144), (2048, 640, 262144), (300, 4096, 128256), (64, 256, 4096)],
)
def test_liger_computes_kielo_s_chunk(tokens, hidden, vocab):
    rows = fused_chunk_rows(tokens, vocab)
    c = liger_chunk_mem_const(tokens, hidden, vocab)
    got = _liger_rows(tokens, hidden, vocab, c)
    assert rows * vocab * 2 <= FUSED_CHUNK_BYTES or rows == 1
    # Liger's chunks come out at most kielo's rows (so within the budget the planner counts), and not much smaller.
    assert rows // 4 <= got <= rows


def test_gemma_1b_chunks_grow_from_liger_s_default():
    # Liger's default on Gemma 3 1B at 4,096 tokens: 32-row chunks; kielo's: 256 rows (128 MiB of bf16 logits).
    assert _liger_rows(4096, 1152, 262144, 1) == 32
    assert _liger_rows(4096, 1152, 262144, liger_chunk_mem_const(4096, 1152, 262144)) == 256
    # A wrong constant (Liger's default) would not give kielo's rows: the check above can fail.
    assert fused_chunk_rows(4096, 262144) == 256


def test_planner_counts_the_chunk_of_logits():
    from transformers import LlamaConfig

    from kielo.bench.shapes import SHAPES
    from kielo.plan.memory import Setup, estimate
    from kielo.plan.shape import shape_from_config

    shape = shape_from_config(LlamaConfig(**SHAPES["llama8b"]))
    e = estimate(shape, Setup(stream_bytes=2, liger=True, fused_head=True))
    assert e.head >= fused_chunk_rows(4096, 128256) * 128256 * 2 + 4096 * 4096 * 2 * 3
