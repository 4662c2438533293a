"""Training precision of what bitsandbytes leaves unquantized, and the optional fused GPU kernels.

peft's ``prepare_model_for_kbit_training`` upcasts the embedding, norms and head to fp32, so the whole
residual stream, the attention and the head run in fp32 between the 4-bit matmuls. That is the stock
stack's arithmetic; ``training.stream_dtype: fp32`` keeps it.

``training.stream_dtype: auto`` takes the compute-dtype stream, with Liger's kernels when installed, for the
families whose bf16-stream training was measured against stock's (``bench/NOTES.md``), on CUDA; it keeps fp32
for BLOOM and the families not measured. ``compute`` asks for it anywhere.

The choice is resolved once, before training, into the config itself (:func:`resolve_hardware`: device,
compute dtype, stream dtype and kernel set all concrete); everything after reads it from there
(:func:`resolved_precision`), and the resolved config is what a run saves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.model.device import COMPUTE_DTYPES, DTYPE_NAMES, compute_dtype, pick_device

log = logging.getLogger("kielo")

# Model types whose bf16-stream training was measured against stock's (bench/NOTES.md: LoRA gradients as close
# to fp32's as Unsloth's; BLOOM's eager attention is not, so it is not here).
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
    varlen: bool = False  # packed rows attend through variable-length flash attention (kielo.model.varlen)

    def describe(self) -> str:
        stream = str(self.stream).removeprefix("torch.")
        text = f"residual stream {stream}" + (", Liger kernels + fused loss head" if self.liger else "")
        return text + (", varlen attention for packed rows" if self.varlen else "")


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
    if t.distributed == "fsdp" and quantized:
        # FSDP2 computes each layer's parameters in one dtype, the 4-bit storage's (kielo.train.fsdp): the
        # embedding, norms and head are cast to it too, so an fp32 stream cannot be kept.
        if t.stream_dtype == "fp32" and compute != torch.float32:
            raise KieloError(
                "training.stream_dtype fp32 does not run with training.distributed fsdp",
                "use --training.stream_dtype auto (fsdp trains on the compute-dtype stream), or ddp",
            )
        stream = compute
    elif t.stream_dtype == "fp32" or not quantized:
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
    return Precision(stream, liger, resolve_attention(t.attention, model_type, device, stream))


def resolve_attention(choice: str, model_type: str, device: torch.device, stream: torch.dtype) -> bool:
    """Whether packed rows attend through varlen attention (``training.attention``): the kernel is flash
    attention, so CUDA and a 16-bit stream; BLOOM's ALiBi and decoders that can't pack keep their own."""
    from kielo.model import varlen

    fits = model_type in COMPUTE_STREAM_MEASURED and (model_type != "gemma3_text" or varlen.supports_sliding_window())
    runs = device.type == "cuda" and stream in varlen.COMPUTE and varlen.available()
    if choice == "varlen" and not (fits and runs):
        why = (
            f"model type {model_type!r} is not one of {', '.join(COMPUTE_STREAM_MEASURED)}"
            if not fits
            else "it needs a CUDA GPU, torch >= 2.10 and a bf16/fp16 residual stream (training.stream_dtype)"
        )
        raise KieloError(f"training.attention `varlen` can't be used here: {why}", "use --training.attention auto (or sdpa)")
    return choice == "varlen" or (choice == "auto" and fits and runs)


def resolve_hardware(config: Config, model_type: str, device: torch.device | None = None) -> Config:
    """``config`` with ``training.device``, ``quantization.compute_dtype``, ``training.stream_dtype``,
    ``training.kernels`` and ``training.attention`` made concrete for ``model_type`` on this machine (``device``: the one to train on,
    default ``training.device``). Resolving a resolved config gives it back unchanged."""
    device = device or pick_device(config.training.device)
    compute = compute_dtype(config.quantization, device)
    precision = resolve_precision(config, model_type, device, compute)
    training = replace(
        config.training,
        device=device.type,
        stream_dtype="compute" if precision.stream == compute else "fp32",
        kernels="liger" if precision.liger else "none",
        attention="varlen" if precision.varlen else "sdpa",
    )
    return replace(config, quantization=replace(config.quantization, compute_dtype=DTYPE_NAMES[compute]), training=training)


def resolved_precision(config: Config) -> Precision:
    """The precision a config resolved by :func:`resolve_hardware` trains with."""
    t, q = config.training, config.quantization
    if "auto" in (q.compute_dtype, t.stream_dtype, t.kernels, t.attention):
        raise ValueError("resolved_precision needs a config resolved by resolve_hardware (no `auto` left)")
    compute = COMPUTE_DTYPES[q.compute_dtype]
    return Precision(compute if t.stream_dtype == "compute" else torch.float32, t.kernels == "liger", t.attention == "varlen")


def apply_precision(model, precision: Precision) -> None:
    """Cast the frozen unquantized weights to the stream dtype and patch in Liger's kernels (on this model)."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32 and precision.stream != torch.float32:
            p.data = p.data.to(precision.stream)
    if precision.liger:
        import liger_kernel.transformers as liger

        name, mlp = LIGER_FAMILIES[model.config.model_type]
        getattr(liger, name)(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model, **mlp)
    if precision.varlen:
        from kielo.model import varlen

        varlen.install(model)
    log.info("training precision: %s", precision.describe())
