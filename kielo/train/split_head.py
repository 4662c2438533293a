"""The loss head in fp32 precision at the price of compute-dtype matmuls (``training.stream_dtype: mixed``).

Which head arithmetic the LoRA gradients follow was measured (``bench/NOTES.md``): a head matmul on bf16
operands moved them further from the stock stack's fp32 head than everything else in a bf16 layer did. An
fp32 matmul of the 128k-vocabulary head costs ~0.2 s a step on a Llama-8B shape, though. The head weight was
loaded in the compute dtype, so it is exact there; the fp32 hidden state ``h`` splits exactly enough into
``hi = h.to(bf16)`` and ``lo = (h - hi).to(bf16)`` (16 of fp32's 24 mantissa bits), and
``h @ W.T = hi @ W.T + lo @ W.T`` with both products accumulated and returned in fp32 (cuBLAS, ``out_dtype``).
The gradient ``g @ W`` splits ``g`` the same way. Four tensor-core matmuls instead of two fp32 ones.

Like a fused linear cross-entropy, the forward computes the loss and the gradient of ``h`` chunk by chunk and
keeps only the latter (rows x hidden in fp32), never the logits of all rows.
"""

from __future__ import annotations

import torch

# Bytes of fp32 logits one chunk may hold (rows = this / (4 x vocab)); the chunk also holds two half-size
# splits of its gradient, so ~2x this at once.
CHUNK_BYTES = 256 * 2**20


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of compute-dtype operands accumulated and returned in fp32 (CPU: in fp32 outright)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def split_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for fp32 ``x`` and compute-dtype ``w``, as two compute-dtype products summed in fp32."""
    hi = x.to(w.dtype)
    lo = (x - hi.float()).to(w.dtype)
    out = mm_fp32(hi, w)
    out += mm_fp32(lo, w)
    return out


class SplitHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` (soft-capped if ``cap``) against ``targets``."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, cap):
        rows = max(16, CHUNK_BYTES // (4 * weight.shape[0]))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        wt = weight.t()
        for i in range(0, hidden.shape[0], rows):
            h, y = hidden[i:i + rows].float(), targets[i:i + rows]
            z = split_mm(h, wt)
            if cap:
                t = torch.tanh(z / cap)
                z = t * cap
            lse = torch.logsumexp(z, dim=1)
            total += (lse - z.gather(1, y[:, None]).squeeze(1)).sum()
            if grad is None:
                continue
            p = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            p[torch.arange(len(y), device=p.device), y] -= 1
            if cap:
                p *= 1 - t * t
            grad[i:i + rows] = split_mm(p, weight)
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return total

    @staticmethod
    def backward(ctx, out_grad):
        (grad,) = ctx.saved_tensors
        return (grad * out_grad).to(ctx.hidden_dtype), None, None, None


def split_head_loss_sum(lm, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Head + cross-entropy summed over ``hidden``'s rows, fp32-exact from compute-dtype matmuls."""
    weight = lm.get_output_embeddings().weight
    if weight.requires_grad:
        raise ValueError("the split loss head is for a frozen output head")
    return SplitHeadLoss.apply(hidden, weight, targets, getattr(lm.config, "final_logit_softcapping", None))
