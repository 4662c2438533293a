"""Training precision of what bitsandbytes leaves unquantized, and the optional fused GPU kernels.

peft's ``prepare_model_for_kbit_training`` upcasts the embedding, norms and head to fp32, so the whole
residual stream, the attention and the head run in fp32 between the 4-bit matmuls. That is the stock
stack's arithmetic; kielo keeps it wherever a faster one has not been measured to give the same gradients.

Measured on one H100 (``bench/NOTES.md``: random weights, LoRA-gradient cosine against stock): a bf16
stream with Liger's kernels and its fused head is 0.9996 from stock on the Gemma 3 1B and 4B shapes at
1.2-1.7x the speed and a quarter of the memory, but 0.995 on Llama-3.1-8B and 0.86 on BLOOM (whose eager
attention does the softmax in the stream's dtype). So ``auto`` takes the bf16 stream only for Gemma 3 on
CUDA; ``training.stream_dtype: compute`` asks for it anywhere.

``mixed`` keeps what the gradients proved sensitive to in fp32 and moves the rest to the compute dtype: the
residual stream (each layer's input and the adds into it) and the loss head stay fp32 (the head as a split
bf16 matmul, ``kielo.train.split_head``), while everything inside a decoder layer (attention, MLP, LoRA) runs
in the compute dtype: each norm inside a layer hands the compute dtype to the matmuls after it, where the
stock stack rounds to it anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kielo.config.schema import Config
from kielo.errors import KieloError

log = logging.getLogger("kielo")

# Model types whose bf16-stream gradients matched the fp32 stream's (cosine >= 0.999) in the benchmark.
COMPUTE_STREAM_MEASURED = ("gemma3_text",)
# Model types whose layers take the mixed stream (norm -> matmul, RoPE tables; no dtype-bound extras such as
# BLOOM's ALiBi bias, which is built in the stream's dtype and added to the compute-dtype scores).
MIXED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
# Liger's per-family patch functions, and the MLP kernel each family takes.
LIGER_FAMILIES = {
    "llama": ("apply_liger_kernel_to_llama", {"swiglu": True}),
    "gemma3_text": ("apply_liger_kernel_to_gemma3_text", {"geglu": True}),
}


@dataclass(frozen=True)
class Precision:
    stream: torch.dtype  # dtype of the residual stream (of embedding, norms and head unless mixed)
    liger: bool  # Liger's RMSNorm, RoPE and MLP kernels (and its fused linear cross-entropy head unless mixed)
    layers: torch.dtype | None = None  # mixed: the dtype inside each decoder layer; None = the stream's

    @property
    def head(self) -> str:
        """The loss head: ``split`` (fp32-exact, mixed), ``fused`` (Liger's, compute dtype) or ``chunked``."""
        if self.layers is not None:
            return "split"
        return "fused" if self.liger else "chunked"

    def describe(self) -> str:
        def name(dtype: torch.dtype) -> str:
            return str(dtype).removeprefix("torch.")

        text = f"residual stream {name(self.stream)}"
        if self.layers is not None:
            text += f", layers in {name(self.layers)}, split fp32 loss head"
        if self.liger:
            text += ", Liger kernels" + (" + fused loss head" if self.head == "fused" else "")
        return text


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
            raise KieloError("training.kernels `liger` needs a CUDA GPU (Liger's kernels are Triton)",
                             "use --training.kernels auto (or none) on CPU")
        if not liger_installed():
            raise KieloError("training.kernels `liger` needs the liger-kernel package", "pip install 'kielo[gpu]'")
        if model_type not in LIGER_FAMILIES:
            raise KieloError(f"training.kernels `liger`: no Liger kernels for model type {model_type!r}",
                             f"use --training.kernels auto; Liger covers {', '.join(LIGER_FAMILIES)}")
    layers = None
    if t.stream_dtype == "mixed" and model_type not in MIXED_FAMILIES:
        raise KieloError(f"training.stream_dtype `mixed` is not available for model type {model_type!r}",
                         f"use --training.stream_dtype auto; mixed covers {', '.join(MIXED_FAMILIES)}")
    if t.stream_dtype == "fp32" or not quantized:
        # Without quantization nothing is upcast: the stream already has the weights' dtype.
        stream = torch.float32 if quantized else compute
    elif t.stream_dtype == "compute":
        stream = compute
    elif t.stream_dtype == "mixed":
        stream, layers = torch.float32, compute
    else:
        stream = compute if device.type == "cuda" and model_type in COMPUTE_STREAM_MEASURED else torch.float32
    inner = layers or stream
    # Liger's kernels were measured with compute-dtype layers only; auto uses them there.
    if t.kernels == "liger":
        liger = True
    elif t.kernels == "auto":
        liger = (device.type == "cuda" and inner != torch.float32 and model_type in LIGER_FAMILIES
                 and liger_installed())
    else:
        liger = False
    return Precision(stream, liger, layers if layers != stream else None)


def apply_precision(model, precision: Precision) -> None:
    """Cast the frozen unquantized weights to the stream dtype and patch in Liger's kernels (on this model)."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32 and precision.stream != torch.float32:
            p.data = p.data.to(precision.stream)
    if precision.layers is not None:
        mix_stream(model, precision.layers)
    if precision.liger:
        import liger_kernel.transformers as liger

        name, mlp = LIGER_FAMILIES[model.config.model_type]
        getattr(liger, name)(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False,
                             model=model, **mlp)
    # The loss head (kielo.train.loss) and the memory planner read these.
    model.kielo_head = precision.head
    model.kielo_precision = precision
    log.info("training precision: %s", precision.describe())


def _cast_output(dtype: torch.dtype):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return tuple(t.to(dtype) for t in output)
        return output.to(dtype)

    return hook


def mix_stream(model, dtype: torch.dtype) -> None:
    """Keep the residual stream in fp32 and run each decoder layer in ``dtype`` (``training.stream_dtype: mixed``).

    The embedding and head weights go back to ``dtype`` (they were loaded in it, so the values are exact and
    half the bytes stay), the embedding hands the stream fp32; every norm inside a decoder layer and the RoPE
    tables hand ``dtype`` on, so attention, MLP and LoRA run in it, and each layer's output adds into the fp32
    stream (type promotion). The final norm stays fp32: the split head (``kielo.train.split_head``) reads it.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None and module.weight.dtype == torch.float32:
            module.weight.data = module.weight.data.to(dtype)
    model.get_input_embeddings().register_forward_hook(_cast_output(torch.float32))
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise KieloError("training.stream_dtype `mixed`: this model's decoder layers were not recognised",
                         "use --training.stream_dtype fp32")
    for layer in layers:
        for module in layer.modules():
            if "Norm" in type(module).__name__:
                module.register_forward_hook(_cast_output(dtype))
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            module.register_forward_hook(_cast_output(dtype))
