"""The LoRA branch of a training model, computed in the dtype of its input.

peft keeps LoRA weights in fp32 (right for AdamW: bf16 weights would lose small updates to rounding) and
casts each LoRA layer's input to fp32 to match them. On a bf16 stream that costs, per LoRA layer and pass,
an fp32 copy of the input (kept for backward: 4 bytes per element, seven layers each) and fp32 matmuls
without tensor cores; peft's 4-bit layer also clones the base output "defensively" before adding to it.
Here the branch is ``(dropout(x) @ A^T) @ B^T * scaling`` with A and B cast to x's dtype: the casts are
r x width, tiny, and autograd returns their gradients to the fp32 weights in fp32. With an fp32 stream the
arithmetic is peft's exactly (the casts are no-ops); only the clone goes.

On a compute-dtype stream over a 4-bit base, base and LoRA are one autograd node (:class:`LoraLinear4bit`):
the LoRA product is added to the base output by the GEMM itself (``addmm_``, the scaling folded into the
r x out cast of B) and, without dropout, the LoRA part of the input gradient is added the same way onto the
base part in backward (with dropout it flows back through the dropout mask as usual). That drops a full-size
scale, add and gradient add per layer and pass (~900 of a Llama-8B step's elementwise launches) and the Python
of peft's and bitsandbytes' autograd nodes: 8% off the step on Llama-8B, 6% on Gemma 3 1B (H200, interleaved
A/B, ``bench/ab_fused_lora.py``).

Only plain LoRA on the single active adapter takes these paths; DoRA, merged or disabled adapters and
mixed-adapter batches go through peft's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from kielo.model.nf4_dequant import dequantize_layer, linear_4bit, resolve


class LoraLinear4bit(torch.autograd.Function):
    """``base(x) + (h @ A^T) @ (B * scale)^T`` for a frozen 4-bit ``base``, compute-dtype ``x`` and ``h`` the
    LoRA input: ``dropout(x)``, or None for ``x`` itself (no dropout).

    Saved for backward: the LoRA input (x is kept anyway: the other projections of the same input share it),
    h @ A^T (rows x r) and the r-wide casts of A and B; the base weight is dequantized again in backward, as
    bitsandbytes does. Everything goes through save_for_backward, so non-reentrant checkpointing recomputes it
    like any node. ``kernel`` dequantizes the base weight (:mod:`kielo.model.nf4_dequant`).

    ``keep`` (a research lever, :func:`set_keep_weight`) saves the dequantized weight for backward instead: under
    non-reentrant checkpointing the first forward's saved tensors are dropped, so the weight is kept only from a
    layer's recomputation to its backward (one layer's weights in the compute dtype, 436 MiB on Llama-3.1-8B),
    and each weight is dequantized twice a step instead of three times. Without checkpointing it would keep
    every layer's weights, so only checkpointed training may set it.
    """

    @staticmethod
    def forward(ctx, x, h, a, b, base, scale, kernel="bitsandbytes", keep=False):
        lora_in = x if h is None else h
        a_c, b_c = a.to(x.dtype), (b * scale).to(x.dtype)
        xa = lora_in.reshape(-1, x.shape[-1]) @ a_c.t()
        weight = dequantize_layer(base, kernel).to(x.dtype) if keep else None
        out = F.linear(x, weight) if keep else linear_4bit(x, base, kernel)
        out.view(-1, out.shape[-1]).addmm_(xa, b_c.t())
        ctx.base, ctx.scale, ctx.x_shape, ctx.dropout, ctx.kernel = base, scale, x.shape, h is not None, kernel
        ctx.save_for_backward(lora_in, xa, a_c, b_c, *([weight] if keep else []))
        return out

    @staticmethod
    def backward(ctx, grad):
        lora_in, xa, a_c, b_c, *kept = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(lora_in.dtype)
        gxa = g2 @ b_c  # (rows, r): the gradient reaching h @ A^T, scale included through b_c
        gx = gh = ga = gb = None
        if ctx.needs_input_grad[0]:
            weight = kept[0] if kept else dequantize_layer(ctx.base, ctx.kernel)
            gx = g2 @ weight.to(lora_in.dtype)
            if not ctx.dropout:  # x is the LoRA input too: its LoRA part lands on the base part in the GEMM
                gx.addmm_(gxa, a_c)
            gx = gx.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            gh = (gxa @ a_c).view(ctx.x_shape)
        if ctx.needs_input_grad[2]:
            ga = (gxa.t() @ lora_in.reshape(-1, lora_in.shape[-1])).float()
        if ctx.needs_input_grad[3]:
            gb = (g2.t() @ xa).float().mul_(ctx.scale)
        return gx, gh, ga, gb, None, None, None, None


def _fusable(self, x: torch.Tensor, args, kwargs) -> bool:
    """Whether :class:`LoraLinear4bit` computes this layer: the layer was set up fused (:func:`set_fused_lora`),
    and it sees a compute-dtype input to a bias-free 4-bit base."""
    import bitsandbytes as bnb

    return (
        self._kielo_fused
        and not args
        and not kwargs
        and x.dtype != torch.float32
        and isinstance(self.base_layer, bnb.nn.Linear4bit)
        and self.base_layer.bias is None
    )


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    if (
        self.disable_adapters
        or self.merged
        or kwargs.get("adapter_names") is not None
        or len(active) != 1
        or active[0] in self.lora_variant
        or active[0] not in self.lora_A
    ):
        return self._kielo_peft_forward(x, *args, **kwargs)
    name = active[0]
    if _fusable(self, x, args, kwargs):
        dropout = self.lora_dropout[name]
        h = None if isinstance(dropout, torch.nn.Identity) else dropout(x)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        keep = self._kielo_keep_weight
        return LoraLinear4bit.apply(x, h, a, b, self.base_layer, self.scaling[name], self._kielo_dequant, keep)
    result = self.base_layer(x, *args, **kwargs)
    h = self.lora_dropout[name](x)
    a = self.lora_A[name].weight
    b = self.lora_B[name].weight
    lora = F.linear(F.linear(h, a.to(h.dtype)), b.to(h.dtype)) * self.scaling[name]
    return result + lora.to(result.dtype)


def lora_in_input_dtype(model, fused: bool = True, dequantize: str = "auto") -> int:
    """Give every plain LoRA linear layer of ``model`` the forward above, with the fused 4-bit + LoRA node where
    it applies when ``fused``, its base weights dequantized by ``dequantize`` (auto, triton or bitsandbytes:
    :mod:`kielo.model.nf4_dequant`); returns how many layers were changed."""
    from peft.tuners.lora import LoraLayer

    changed = 0
    for module in model.modules():
        if (
            isinstance(module, LoraLayer)
            and isinstance(getattr(module, "base_layer", None), torch.nn.Linear)
            and not hasattr(module, "_kielo_peft_forward")
        ):
            module._kielo_peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            changed += 1
    set_fused_lora(model, fused)
    set_dequantize(model, dequantize)
    set_keep_weight(model, False)
    return changed


def set_fused_lora(model, fused: bool) -> None:
    """Switch the fused 4-bit + LoRA node on or off in every layer :func:`lora_in_input_dtype` set up (an
    interleaved A/B of both in one process: ``bench/ab_fused_lora.py``)."""
    for module in model.modules():
        if hasattr(module, "_kielo_peft_forward"):
            module._kielo_fused = fused


def set_dequantize(model, kernel: str) -> None:
    """Choose the fused node's dequantize kernel in every layer :func:`lora_in_input_dtype` set up (the bench's
    A/B of Triton against bitsandbytes)."""
    kernel = resolve(kernel)
    for module in model.modules():
        if hasattr(module, "_kielo_peft_forward"):
            module._kielo_dequant = kernel


def set_keep_weight(model, keep: bool) -> None:
    """Keep each dequantized base weight from a layer's recomputation to its backward (``keep`` of
    :class:`LoraLinear4bit`; checkpointed training only) in every layer :func:`lora_in_input_dtype` set up."""
    for module in model.modules():
        if hasattr(module, "_kielo_peft_forward"):
            module._kielo_keep_weight = keep


def restore_peft_forward(model) -> None:
    """Undo :func:`lora_in_input_dtype`: peft's own forward in every layer."""
    for module in model.modules():
        if hasattr(module, "_kielo_peft_forward"):
            module.forward = module._kielo_peft_forward
            del module._kielo_peft_forward
            del module._kielo_fused
            del module._kielo_dequant
            del module._kielo_keep_weight
