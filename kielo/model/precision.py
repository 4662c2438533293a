"""Training precision of what bitsandbytes leaves unquantized, and the optional fused GPU kernels.

peft's ``prepare_model_for_kbit_training`` upcasts the embedding, norms and head to fp32, so the whole
residual stream, the attention and the head run in fp32 between the 4-bit matmuls. That is the stock
stack's arithmetic; ``training.stream_dtype: fp32`` keeps it.

Measured on H100/H200 (``bench/NOTES.md``: random weights, LoRA-gradient cosine against stock): a bf16
stream with Liger's kernels and its fused head is 0.9996 from stock on the Gemma 3 1B and 4B shapes at
1.2-1.7x the speed and a quarter of the memory; 0.9955 on Llama-3.1-8B at 3x the speed and 43% of the
memory, where Unsloth, measured the same way, is 0.9957 and stock itself 0.996 from exact fp32 arithmetic
(bf16 rounding anywhere in 32 random-weight layers costs that much; losses stay within 0.003 of stock's);
and 0.86 on BLOOM, whose eager attention does the softmax in the stream's dtype. So ``auto`` takes the bf16
stream for Gemma 3 and Llama on CUDA and keeps fp32 for BLOOM and the families not measured;
``training.stream_dtype: compute`` asks for it anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kielo.config.schema import Config
from kielo.errors import KieloError

log = logging.getLogger("kielo")

# Model types whose bf16-stream training was measured against stock's: Gemma 3 (gradient cosine 0.9996) and
# Llama (0.9955, as close as Unsloth's 0.9957).
COMPUTE_STREAM_MEASURED = ("gemma3_text", "llama")
# Liger's per-family patch functions, and the MLP kernel each family takes.
LIGER_FAMILIES = {
    "llama": ("apply_liger_kernel_to_llama", {"swiglu": True}),
    "gemma3_text": ("apply_liger_kernel_to_gemma3_text", {"geglu": True}),
}


@dataclass(frozen=True)
class Precision:
    stream: torch.dtype  # dtype of embedding, norms and head during training (so of the residual stream)
    liger: bool  # Liger's RMSNorm, RoPE and MLP kernels, and its fused linear cross-entropy as the loss head

    def describe(self) -> str:
        stream = str(self.stream).removeprefix("torch.")
        return f"residual stream {stream}" + (", Liger kernels + fused loss head" if self.liger else "")


def liger_installed() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_precision(config: Config, model_type: str, device: torch.device, compute: torch.dtype) -> Precision:
    """What ``training.stream_dtype`` and ``training.kernels`` mean for this model on this device."""
    t = config.training
    quantized = bool(config.quantization.bits)
    if t.kernels == "liger":
        if device.type != "cuda":
            raise KieloError(
                "training.kernels `liger` needs a CUDA GPU (Liger's kernels are Triton)",
                "use --training.kernels auto (or none) on CPU",
            )
        if not liger_installed():
            raise KieloError("training.kernels `liger` needs the liger-kernel package", "pip install 'kielo[gpu]'")
        if model_type not in LIGER_FAMILIES:
            raise KieloError(
                f"training.kernels `liger`: no Liger kernels for model type {model_type!r}",
                f"use --training.kernels auto; Liger covers {', '.join(LIGER_FAMILIES)}",
            )
    if t.stream_dtype == "fp32" or not quantized:
        # Without quantization nothing is upcast: the stream already has the weights' dtype.
        stream = torch.float32 if quantized else compute
    elif t.stream_dtype == "compute":
        stream = compute
    else:
        stream = compute if device.type == "cuda" and model_type in COMPUTE_STREAM_MEASURED else torch.float32
    # Liger's kernels were measured on the compute-dtype stream only; auto uses them there.
    if t.kernels == "liger":
        liger = True
    elif t.kernels == "auto":
        liger = device.type == "cuda" and stream != torch.float32 and model_type in LIGER_FAMILIES and liger_installed()
    else:
        liger = False
    return Precision(stream, liger)


def apply_precision(model, precision: Precision) -> None:
    """Cast the frozen unquantized weights to the stream dtype and patch in Liger's kernels (on this model)."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32 and precision.stream != torch.float32:
            p.data = p.data.to(precision.stream)
    if precision.liger:
        import liger_kernel.transformers as liger

        name, mlp = LIGER_FAMILIES[model.config.model_type]
        getattr(liger, name)(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model, **mlp)
    # The loss head (Liger's fused linear cross-entropy never holds the logits) and the memory planner read it.
    model.kielo_precision = precision
    log.info("training precision: %s", precision.describe())
