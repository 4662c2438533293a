"""kielo's Triton NF4 dequantize (kielo.model.nf4_dequant) against the NF4 definition and bitsandbytes' path.

On CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1), which needs Triton installed; the GPU test
in tests/test_gpu.py compares it with bitsandbytes' CUDA kernel bit for bit and times both.
"""

from __future__ import annotations

import pytest
import torch

from kielo.model import nf4_dequant as nd


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    nd._kernel.cache_clear()  # compile (interpret) under the variable
    yield
    nd._kernel.cache_clear()


def _quantized(shape, nested=True, blocksize=64, seed=0):
    import bitsandbytes.functional as F

    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    q, qs = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=nested, quant_type="nf4")
    return w, q, qs


def _by_definition(q, qs):
    """code[nibble] * absmax in fp32, high nibble first; the nested absmax is code2[a] * absmax2 + offset."""
    codes = torch.stack([q.flatten() >> 4, q.flatten() & 15], 1).flatten().long()
    if qs.nested:
        s2 = qs.state2
        block2 = torch.arange(qs.absmax.numel()) // s2.blocksize
        absmax = s2.code[qs.absmax.long()] * s2.absmax[block2] + qs.offset
    else:
        absmax = qs.absmax
    n = 1
    for d in qs.shape:
        n *= d
    scale = absmax.repeat_interleave(qs.blocksize)[:n]
    return (qs.code[codes][:n] * scale).view(qs.shape)


@pytest.mark.parametrize(
    ("shape", "nested", "blocksize"),
    [((64, 128), True, 64), ((33, 70), False, 64), ((128, 256), True, 128), ((7, 9), True, 64), ((96, 640), True, 64)],
)
def test_triton_dequantize_is_the_nf4_definition(interpreted, shape, nested, blocksize):
    w, q, qs = _quantized(shape, nested, blocksize)
    assert nd.takes_triton(q, qs)
    want = _by_definition(q, qs)
    assert (want - w).abs().max() < 0.02  # the definition itself: a 4-bit approximation of w
    for dtype in (torch.float32, torch.float16):
        got = nd.dequantize_nf4(q, qs, dtype=dtype)
        assert got.dtype == dtype and got.shape == shape
        assert torch.equal(got, want.to(dtype)), dtype
    # bf16: the interpreter truncates where CUDA rounds to nearest (the GPU test checks the rounding): one step
    got = nd.dequantize_nf4(q, qs, dtype=torch.bfloat16).float()
    assert ((got - want).abs() <= want.abs() * 2**-7).all()
    # a wrong input is caught: the nested absmax read as if it were plain
    if nested:
        qs.nested = False
        qs.absmax = qs.absmax.float()
        assert not torch.equal(nd.dequantize_nf4(q, qs, dtype=torch.float32), want)


def test_what_goes_to_bitsandbytes(interpreted, monkeypatch):
    _, q, qs = _quantized((64, 128))
    assert nd.takes_triton(q, qs)
    assert not nd.takes_triton(q.view(1, -1), qs)  # bitsandbytes' transposed form
    assert not nd.takes_triton(q[: q.numel() // 2], qs)  # not the whole weight
    qs.quant_type = "fp4"
    assert not nd.takes_triton(q, qs)
    monkeypatch.delenv("TRITON_INTERPRET")
    qs.quant_type = "nf4"
    assert not nd.takes_triton(q, qs)  # CPU tensors without the interpreter
    assert nd.resolve("bitsandbytes") == "bitsandbytes"
    with pytest.raises(ValueError, match="unknown dequantize kernel"):
        nd.resolve("cuda")


def test_fused_lora_node_trains_the_same_through_either_kernel(interpreted, tiny_llama, tmp_path, monkeypatch):
    """The fused 4-bit + LoRA node with the Triton kernel (forward, recompute and input gradient) gives the
    bitsandbytes path's loss and LoRA gradients exactly. The kernel's fp32 output is rounded to bf16 by torch
    here, as CUDA's conversion in the kernel rounds (the interpreter's truncates)."""
    import kielo.model.lora_forward as lf
    from tests.test_lora_forward import _batch, _loss_and_grads, _model

    monkeypatch.setattr(nd, "BNB_DEQUANT_ROWS", 0)  # the tiny batch has fewer rows than bitsandbytes' bound
    model = _model(tiny_llama, tmp_path, dropout=0.0, compute="bf16", stream_dtype="compute", gradient_checkpointing=True)
    model.train()
    batch = _batch(model.config.vocab_size)
    calls = []
    kernel = nd.dequantize_nf4

    def rounded(packed, qs, dtype=None):
        calls.append(1)
        return kernel(packed, qs, dtype=torch.float32).to(dtype or qs.dtype)

    monkeypatch.setattr(nd, "dequantize_nf4", rounded)
    lf.set_dequantize(model, "triton")
    triton = _loss_and_grads(model, batch)
    n_lora = sum(1 for m in model.modules() if hasattr(m, "_kielo_peft_forward"))
    assert len(calls) == 3 * n_lora  # forward, recompute, input gradient
    lf.set_dequantize(model, "bitsandbytes")
    bnb = _loss_and_grads(model, batch)
    assert len(calls) == 3 * n_lora
    assert triton[1].abs().sum() > 0
    assert triton[0] == bnb[0]
    assert torch.equal(triton[1], bnb[1])
