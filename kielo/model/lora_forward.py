"""The LoRA branch of a training model, computed in the dtype of its input.

peft keeps LoRA weights in fp32 (right for AdamW: bf16 weights would lose small updates to rounding) and
casts each LoRA layer's input to fp32 to match them. On a bf16 stream that costs, per LoRA layer and pass,
an fp32 copy of the input (kept for backward: 4 bytes per element, seven layers each) and fp32 matmuls
without tensor cores; peft's 4-bit layer also clones the base output "defensively" before adding to it.
Here the branch is ``(dropout(x) @ A^T) @ B^T * scaling`` with A and B cast to x's dtype: the casts are
r x width, tiny, and autograd returns their gradients to the fp32 weights in fp32. With an fp32 stream the
arithmetic is peft's exactly (the casts are no-ops); only the clone goes.

Only plain LoRA on the single active adapter takes this path; DoRA, merged or disabled adapters and
mixed-adapter batches go through peft's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None or len(active) != 1
            or active[0] in self.lora_variant or active[0] not in self.lora_A):
        return self._kielo_peft_forward(x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x, *args, **kwargs)
    h = self.lora_dropout[name](x)
    a = self.lora_A[name].weight
    b = self.lora_B[name].weight
    lora = F.linear(F.linear(h, a.to(h.dtype)), b.to(h.dtype)) * self.scaling[name]
    return result + lora.to(result.dtype)


def lora_in_input_dtype(model) -> int:
    """Give every plain LoRA linear layer of ``model`` the forward above; returns how many were changed."""
    from peft.tuners.lora import LoraLayer

    changed = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(getattr(module, "base_layer", None), torch.nn.Linear) \
                and not hasattr(module, "_kielo_peft_forward"):
            module._kielo_peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            changed += 1
    return changed


def restore_peft_forward(model) -> None:
    """Undo :func:`lora_in_input_dtype` (the benchmark compares both)."""
    for module in model.modules():
        if hasattr(module, "_kielo_peft_forward"):
            module.forward = module._kielo_peft_forward
            del module._kielo_peft_forward
