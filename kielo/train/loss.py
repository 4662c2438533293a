"""Next-token loss computed only where it is trained.

The output head of a large-vocabulary model (Gemma 3: 262,144 tokens) costs more than the rest of a small
model, and the prompt tokens it would score are masked anyway. So the decoder runs once, the hidden
states at trained positions are gathered, and only those go through the head and cross-entropy. The
result equals ``model(...).logits`` + masked cross-entropy (a test checks it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kielo.data.batches import Batch
from kielo.data.encode import IGNORE
from kielo.model.adapter import causal_lm
from kielo.plan.memory import HEAD_CHUNK, fused_chunk_rows
from kielo.train.packing import model_inputs

# (model, batch) -> (summed token loss over the batch's trained positions, their number)
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, int]]


def head_logits(lm, hidden: torch.Tensor) -> torch.Tensor:
    """Output-head logits in fp32, with the model's final soft-capping if it has one."""
    logits = lm.get_output_embeddings()(hidden).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def trained_hidden(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states at positions whose next token is trained, their targets, and the mask (B, L-1)."""
    lm = causal_lm(model)
    decoder = lm.base_model  # `.model` for Llama/Gemma, `.transformer` for BLOOM (base_model_prefix)
    out = decoder(**model_inputs(model, batch), use_cache=False)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE
    return hidden[:, :-1][mask], targets[mask], mask


def liger_chunk_mem_const(tokens: int, hidden: int, vocab: int, itemsize: int = 2) -> int:
    """The ``chunk_mem_const`` that makes Liger's fused head compute :func:`fused_chunk_rows` rows at a time.

    Liger sizes a chunk so that its logits stay under ``chunk_mem_const`` x tokens x width elements (rows =
    next power of two of tokens / ceil(vocab / (c x width))); its default c = 1 gives Gemma 3 1B (vocabulary
    262,144, width 1,152) chunks of 32 rows at 4,096 tokens: 128 skinny GEMM pairs, 55 ms of a 385 ms step on
    an H100 (bench/NOTES.md, "Second fair run"). Here the chunk is bounded by bytes instead.
    """
    rows = fused_chunk_rows(tokens, vocab, itemsize)
    chunks = -(-tokens // rows)
    # The largest c with ceil(V / (c x width)) >= chunks: Liger's rows then come out at most ``rows``.
    return max(1, vocab // (chunks * hidden))


def fused_head_loss_sum(lm, hidden: torch.Tensor, targets: torch.Tensor, chunk_mem_const: int | None = None) -> torch.Tensor:
    """Head + cross-entropy summed over ``hidden``'s rows in Liger's fused kernel (no logits kept; CUDA), in
    chunks of :func:`fused_chunk_rows` rows unless ``chunk_mem_const`` (Liger's own knob; 1 = its default) is given."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    w = lm.get_output_embeddings().weight
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if chunk_mem_const is None:
        chunk_mem_const = liger_chunk_mem_const(hidden.shape[0], w.shape[1], w.shape[0], w.element_size())
    extra = {"chunk_mem_const": chunk_mem_const} if _liger_takes_chunk_mem_const() else {}
    return liger_fused_linear_cross_entropy(hidden.to(w.dtype), w, targets, reduction="sum", softcap=cap, **extra)


@functools.cache
def _liger_takes_chunk_mem_const() -> bool:
    """liger-kernel 0.8.5 added ``chunk_mem_const``; earlier releases size chunks their own way only."""
    import inspect

    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return "chunk_mem_const" in inspect.signature(liger_fused_linear_cross_entropy).parameters


def chunked_loss_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over the batch's trained positions, and their number: the head runs in
    chunks of :data:`HEAD_CHUNK` rows, fp32 logits and cross-entropy (any device)."""
    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], HEAD_CHUNK):
        total = total + F.cross_entropy(head_logits(lm, h[i : i + HEAD_CHUNK]), y[i : i + HEAD_CHUNK], reduction="sum")
    return total, int(y.numel())


def fused_loss_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """As :func:`chunked_loss_sum`, with head and cross-entropy in Liger's fused kernel (never holds the
    logits; CUDA and liger-kernel)."""
    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)
    return fused_head_loss_sum(lm, h, y), int(y.numel())


def liger_default_chunk_loss_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """As :func:`fused_loss_sum`, with Liger's own chunk sizes (the bench's A/B of kielo's)."""
    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)
    return fused_head_loss_sum(lm, h, y, chunk_mem_const=1), int(y.numel())


def loss_head(liger: bool) -> LossFn:
    """The loss head a training path uses: Liger's fused kernel with Liger's kernel set, else the chunked head."""
    return fused_loss_sum if liger else chunked_loss_sum


@torch.no_grad()
def per_example_loss(model, batch: Batch) -> list[tuple[float, int]]:
    """(loss sum, trained tokens) for each row of a padded batch, in row order."""
    lm = causal_lm(model)
    h, y, mask = trained_hidden(model, batch)
    ce = (
        torch.cat(
            [
                F.cross_entropy(head_logits(lm, h[i : i + HEAD_CHUNK]), y[i : i + HEAD_CHUNK], reduction="none")
                for i in range(0, h.shape[0], HEAD_CHUNK)
            ]
        )
        if h.shape[0]
        else h.new_zeros(0)
    )
    counts = mask.sum(dim=1).tolist()
    out, at = [], 0
    for n in counts:
        out.append((float(ce[at : at + n].sum()), int(n)))
        at += n
    return out
