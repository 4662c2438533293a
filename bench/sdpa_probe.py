"""Which SDPA kernel runs, and what it keeps for backward, per dtype, head size, mask and GQA (GPU).

The memory planner (``kielo/plan/memory.py``) must know when attention keeps its probabilities (the math
path) and when a fused kernel keeps only a log-sum-exp per row; this prints, for each case, the backends
that accept it and the bytes alive after the forward (what backward will read) per query token.

    python bench/sdpa_probe.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def case(dtype, head_dim: int, masked: bool, gqa: bool, batch: int = 2, heads: int = 16, t: int = 1024) -> str:
    kv_heads = heads // 4 if gqa else heads
    q = torch.randn(batch, heads, t, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, t, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, t, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    mask = torch.ones(t, t, device="cuda", dtype=torch.bool).tril()[None, None].expand(batch, 1, t, t) if masked else None
    kw = dict(attn_mask=mask, is_causal=not masked, enable_gqa=gqa)
    accepted = []
    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([b]):
                F.scaled_dot_product_attention(q, k, v, **kw).sum().backward()
            accepted.append(b.name.split("_")[0].lower())
        except RuntimeError:
            pass
    q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = F.scaled_dot_product_attention(q, k, v, **kw)
    kept = torch.cuda.memory_allocated() - base - out.numel() * out.element_size()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out.sum().backward()
    extra = torch.cuda.max_memory_allocated() - before
    per_token = kept / (batch * t)
    probs = heads * t * 4
    return (
        f"{str(dtype):15} d={head_dim:3} mask={masked!s:5} gqa={gqa!s:5} backends {','.join(accepted):28} "
        f"kept {per_token:9.0f} B/token (probs fp32 would be {probs}), backward peak +{extra / 2**20:7.1f} MiB"
    )


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    for dtype in (torch.float32, torch.bfloat16):
        for d in (64, 128, 256):
            for masked in (False, True):
                for gqa in (False, True):
                    print(case(dtype, d, masked, gqa), flush=True)
