"""Attention for packed rows through torch's variable-length flash attention (CUDA, bf16/fp16).

With SDPA a packed row's examples are kept apart by a block-diagonal causal mask (``kielo.train.packing``).
An explicit mask rules out SDPA's flash and cuDNN kernels, and the masked kernel scores every query against
every key of the row: for rows of 2,048 tokens holding examples of ~300 that is ~7x the attention work the
examples need, in the forward, the checkpoint recompute and the backward. ``torch.nn.attention.varlen``
(torch >= 2.10) runs flash attention over each example's bounds (``cu_seqlens``) instead: no mask, only the
causal part of each example computed.

The implementation is registered with transformers under :data:`NAME` (its ``AttentionInterface``), with
SDPA's mask function, so the model computes exactly what SDPA does wherever the bounds are not given
(padded batches, evaluation, generation with a cache, fp32 streams): then it calls SDPA itself. The bounds
come with the batch (``Batch.cu_seqlens``, computed on the host when the row is packed, so no layer waits
for the GPU to find them) and reach every attention layer as transformers' own flash-attention keyword
arguments (``cu_seq_lens_q``, ``max_length_q``), which the decoders pass through unchanged.
"""

from __future__ import annotations

import functools
import inspect

import torch

NAME = "kielo_varlen"
COMPUTE = (torch.bfloat16, torch.float16)


@functools.cache
def _varlen_attn():
    """torch's ``varlen_attn`` and which keywords this torch takes (window_size came in 2.11, enable_gqa later),
    or None when torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "window_size" in params, "enable_gqa" in params


def available() -> bool:
    """Whether this torch has variable-length attention (its kernels need a CUDA GPU)."""
    return _varlen_attn() is not None


def supports_sliding_window() -> bool:
    found = _varlen_attn()
    return bool(found and found[1])


def flash_varlen(q, k, v, cu_seqlens, max_len, scale, window):
    """torch's kernel on ``(tokens, heads, dim)`` tensors: causal within each segment of ``cu_seqlens``, and each
    query sees at most ``window`` keys (itself included) when ``window`` is given."""
    found = _varlen_attn()
    if found is None:
        raise RuntimeError("this torch has no torch.nn.attention.varlen (torch >= 2.10 has)")
    fn, has_window, has_gqa = found
    extra = {}
    if k.shape[1] != q.shape[1]:
        if has_gqa:
            extra["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if has_window:
        extra["window_size"] = (window - 1 if window else -1, 0)
    elif window:
        raise RuntimeError("this torch's varlen_attn has no sliding window (torch >= 2.11 has)")
    else:
        extra["is_causal"] = True
    return fn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale, **extra)


def packed_attention(query, key, value, cu_seqlens, max_len, scaling, sliding_window=None, kernel=flash_varlen):
    """Attention of packed rows: ``query`` (B, H, L, D), ``key``/``value`` (B, Hkv, L, D) in transformers' layout,
    ``cu_seqlens`` the segment bounds over the B x L flattened tokens; returns (B, L, H, D) as transformers'
    attention functions do. ``kernel`` computes the flattened (tokens, heads, dim) attention (tests give it a
    plain-PyTorch one)."""
    b, h, length, d = query.shape

    def flat(t):
        return t.transpose(1, 2).reshape(b * length, t.shape[1], d)

    out = kernel(flat(query), flat(key), flat(value), cu_seqlens, max_len, scaling, sliding_window)
    return out.view(b, length, h, d)


def _runs_flash(query) -> bool:
    return query.is_cuda and query.dtype in COMPUTE


def attention_function(kernel=flash_varlen, runs=_runs_flash):
    """An attention function in transformers' signature: packed rows whose bounds are given and that ``runs``
    accepts go through :func:`packed_attention` with ``kernel``; anything else through SDPA, exactly as
    ``attn_implementation="sdpa"`` runs it."""

    def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        cu = kwargs.get("cu_seq_lens_q")
        if cu is None or not runs(query) or dropout or kwargs.get("softcap"):
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, sliding_window=sliding_window, **kwargs
            )
        return packed_attention(query, key, value, cu, kwargs["max_length_q"], scaling, sliding_window, kernel), None

    return attention_forward


def install(model, name: str = NAME, function=None) -> None:
    """Register ``function`` (default: :func:`attention_function` with torch's kernel) with transformers under
    ``name``, with SDPA's mask function, and make ``model`` (a transformers model) attend through it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, function or attention_function())
    AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)


def uses_varlen(model) -> bool:
    """Whether ``model`` attends through an implementation :func:`install` registered."""
    return str(getattr(model.config, "_attn_implementation", "")).startswith(NAME)
