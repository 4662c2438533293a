"""Peak GPU memory of one training step, estimated from the model's shape and the training setup.

The estimate adds what is resident for the whole step (quantized weights, unquantized weights in the
stream dtype, LoRA weights with gradients and optimizer state, the layer inputs gradient checkpointing
keeps) to the larger of the two moments the peak can fall on: the start of the backward pass, when the
loss head's saved tensors and their gradients are alive, and the backward pass of one recomputed decoder
layer, when that layer's saved activations and their gradients are.

Per-layer activations are counted from what autograd saves in the transformers, peft and bitsandbytes code
kielo trains through (bitsandbytes' 4-bit matmul saves only its quantized weight, so base projections cost
no activation memory; a LoRA branch saves its input, in the stream's dtype; SDPA saves
q, k, v and its output; eager attention saves the probabilities). The byte counts per token are written
out per family below with the tensors they stand for, and ``kielo bench`` prints each estimate
beside the measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kielo.plan.shape import ModelShape

# Rows of hidden states the chunked loss head (kielo.train.loss) sends through the head at once: it bounds
# the fp32 logits tensor (rows x vocab), a memory decision, so the memory model owns it.
HEAD_CHUNK = 1024
# Logits Liger's fused head computes at once, in the compute dtype (kielo.train.loss.liger_chunk_mem_const).
FUSED_CHUNK_BYTES = 128 * 2**20


def fused_chunk_rows(tokens: int, vocab: int, itemsize: int = 2) -> int:
    """Rows of one chunk of logits in kielo's fused head: as many as :data:`FUSED_CHUNK_BYTES` hold, a power
    of two, at most ``tokens``."""
    rows = max(1, min(tokens, FUSED_CHUNK_BYTES // (vocab * itemsize)))
    return 1 << (rows.bit_length() - 1)


GIB = 2**30
# cuBLAS and cuBLASLt keep their workspaces in PyTorch's allocator (32 MiB each by default on recent
# cards), so they count in max_memory_allocated like any tensor.
LIBRARY_WORKSPACE = 64 * 2**20
FP32 = 4


@dataclass(frozen=True)
class Setup:
    """How a step runs, as far as memory is concerned."""

    bits: int = 4  # 4, 8 or 0 (no quantization)
    double_quant: bool = True
    compute_bytes: int = 2  # bytes of quantization.compute_dtype
    stream_bytes: int = FP32  # bytes of the residual stream (training.stream_dtype resolved)
    liger: bool = False  # Liger's norm/RoPE/MLP kernels
    fused_head: bool = False  # Liger's fused linear cross-entropy as the loss head (no logits kept)
    lora_r: int = 16
    lora_targets: list[str] | str = "all-linear"
    lora_dropout: float = 0.0
    optimizer: str = "adamw"
    gradient_checkpointing: bool = True
    checkpoint_offload: bool = False  # checkpointed layer inputs in host memory: two on the GPU at a time
    tokens: int = 4096  # positions in the largest micro-batch (rows x width)
    row_width: int = 2048  # positions one position can attend over (eager attention's T x T)
    trained: int = 4096  # trained positions in that micro-batch
    masked: bool = False  # an explicit attention mask (packed rows or padding): SDPA repeats k/v heads


@dataclass
class Estimate:
    """Peak bytes and the parts they come from."""

    weights: int
    adapter: int
    checkpoints: int
    layer: int  # one decoder layer in backward (saved activations + gradients) or, without checkpointing, transients
    head: int  # loss head at the start of the backward pass
    workspace: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.checkpoints + max(self.layer, self.head) + self.workspace

    def describe(self) -> str:
        rows = [
            ("weights", self.weights),
            ("LoRA + grads + optimizer", self.adapter),
            ("checkpointed layer inputs" if self.parts.get("gc", 1) else "all layers' activations", self.checkpoints),
            ("one layer in backward", self.layer),
            ("loss head", self.head),
            ("workspace", self.workspace),
        ]
        body = ", ".join(f"{name} {b / GIB:.2f}" for name, b in rows)
        return f"{self.total / GIB:.2f} GiB ({body}; the larger of layer and head counts)"


def quantized_bytes_per_param(bits: int, double_quant: bool, compute_bytes: int) -> float:
    """Storage of a quantized weight: NF4 packs two per byte plus an absmax per 64-block (fp32, or uint8 with
    an fp32 per 256 of them when double-quantized); LLM.int8 one byte plus an fp32 scale per row (~0)."""
    if bits == 4:
        return 0.5 + (1 / 64 + FP32 / (64 * 256) if double_quant else FP32 / 64)
    if bits == 8:
        return 1.0
    return float(compute_bytes)


# Linear layers that read the same input tensor (one copy saved for all of them).
SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


def _lora_input_bytes(shape: ModelShape, s: Setup) -> int:
    """Per token: what the LoRA branches (``kielo.model.lora_forward``) save beyond tensors saved anyway.

    Each branch saves its (dropped-out) input for the gradient of A, and A's output (r wide, fp32 weights
    cast to the input's dtype) for B's. On an fp32 stream the inputs are stream tensors the layer formula
    already counts; on a bf16 stream they are the norm outputs, the attention output and the MLP product,
    which nothing else keeps: one copy per distinct input. Dropout saves its output and a one-byte mask per
    element, per branch, instead.
    """
    targets = _targets(shape, s)
    total = s.stream_bytes * s.lora_r * len(targets)
    if s.lora_dropout > 0:
        return total + sum((s.stream_bytes + 1) * fan_in for _, fan_in, _ in targets)
    if s.stream_bytes == FP32:
        return total
    seen = set()
    for name, fan_in, _ in targets:
        leaf = name.rsplit(".", 1)[-1]
        group = next((frozenset(g) for g in SHARED_INPUTS if leaf in g), leaf)
        if group not in seen:
            seen.add(group)
            total += s.stream_bytes * fan_in
    return total


def _targets(shape: ModelShape, s: Setup) -> list[tuple[str, int, int]]:
    t = s.lora_targets
    return [(n, i, o) for n, i, o in shape.layer_linears if t == "all-linear" or n.rsplit(".", 1)[-1] in t]


def layer_activation_bytes_per_token(shape: ModelShape, s: Setup) -> int:
    """Bytes one decoder layer keeps for its backward pass, per token (its input excluded)."""
    sb = s.stream_bytes
    h, a, kv, inter = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate
    fp32_stream = sb == FP32
    lora = _lora_input_bytes(shape, s)
    if shape.model_type == "bloom":
        # LayerNorm outputs n1, n2 and the residual h2 (LayerNorm saves its input); q, k, v reshaped copies;
        # the merged context; the 4h MLP input to GELU and its output. Probabilities are added per row below.
        return sb * (h + 3 * h + h + h + h + 4 * h + 4 * h) + lora
    # SDPA with a mask gets k/v repeated to every query head; Gemma 3's sliding-window layers always have one.
    kv_saved = a if s.masked or shape.model_type.startswith("gemma") else kv
    attention = sb * (a + 2 * kv_saved + a)  # q and k after RoPE, v, SDPA's output
    o_input = sb * a if fp32_stream else 0  # the output projection's input, saved by its LoRA (fp32 stream)
    if s.liger:
        # Liger's RMSNorm saves its input (norm1's is the checkpointed layer input) and a per-row rstd;
        # its SwiGLU/GeGLU saves gate and up and recomputes the activation.
        norms = sb * h
        mlp = 2 * sb * inter + (sb * inter if fp32_stream else 0)
    else:
        # RMSNorm upcasts its input to fp32 and saves it (the stream tensor itself when fp32) and, with an
        # fp32 stream, its output is what q/k/v (gate/up) LoRA saves.
        norms = (FP32 * h + 2 * sb * h) if fp32_stream else 2 * FP32 * h
        mlp = 3 * sb * inter + (sb * inter if fp32_stream else 0)  # gate, activation, up (+ their product)
    extra = 0
    if shape.model_type.startswith("gemma"):
        # Gemma 3 normalises q and k per head and the attention and MLP outputs before each residual add.
        extra = (sb if s.liger else FP32) * (a + kv + 2 * h) + (0 if s.liger or fp32_stream else FP32 * h)
    return norms + attention + o_input + mlp + extra + lora


def attention_probs_bytes_per_token(shape: ModelShape, s: Setup) -> tuple[int, int]:
    """Bytes per token of attention probabilities (a row per head) a layer saves, and the bytes of their
    gradients alive at the layer's backward peak.

    BLOOM's eager attention saves the softmax output in fp32 (and its cast to the stream dtype when that is
    not fp32); backward adds the gradients of the probabilities and of the scores, in the stream dtype.
    SDPA's fused kernels keep only a log-sum-exp per row (measured, ``bench/sdpa_probe.py``), except on an
    fp32 stream without a mask in a model with fewer key/value heads than query heads: transformers then
    asks SDPA for grouped-query attention, which in fp32 only the math path serves (see :func:`estimate`).
    """
    row = shape.n_heads * s.row_width
    sb = s.stream_bytes
    if shape.model_type == "bloom":
        return row * (FP32 + (0 if sb == FP32 else sb)), 2 * row * sb
    return 0, 0


def math_attention_bytes_per_token(shape: ModelShape, s: Setup) -> int:
    """Per token, what SDPA's math path holds at its backward peak: the saved fp32 probabilities, three more
    tensors of their size in backward, and the key/value heads expanded for it (measured: ``sdpa_probe.py``
    and a memory trace of the Llama-8B benchmark step, bench/NOTES.md). 0 where a fused kernel runs."""
    math_path = (
        s.stream_bytes == FP32
        and not s.masked
        and shape.kv_width < shape.q_width
        and shape.model_type != "bloom"
        and not shape.model_type.startswith("gemma")
    )
    if not math_path:
        return 0
    return 4 * shape.n_heads * s.row_width * FP32 + 3 * shape.q_width * FP32


def estimate(shape: ModelShape, s: Setup) -> Estimate:
    """Estimated peak of one training step (``torch.cuda.max_memory_allocated``), with its parts."""
    sb, t = s.stream_bytes, s.tokens
    unquantized_bytes = sb if s.bits else s.compute_bytes
    weights = int(
        shape.quantized_params * quantized_bytes_per_param(s.bits, s.double_quant, s.compute_bytes)
        + (shape.embedding_params + shape.head_params + shape.other_params) * unquantized_bytes
    )
    n_lora = shape.lora_params(s.lora_r, s.lora_targets)
    state = 8 if s.optimizer == "adamw" else 2
    grads = FP32 * n_lora
    adapter_fwd = n_lora * (FP32 + state)  # gradients are freed between steps (zero_grad(set_to_none=True))

    per_token = layer_activation_bytes_per_token(shape, s)
    probs, probs_grads = attention_probs_bytes_per_token(shape, s)
    layer_saved = (per_token + probs) * t
    # Backward through one layer: gradients of the widest activations (MLP: gate, up, product) and of the
    # attention probabilities where they are kept.
    layer_grads = t * shape.intermediate * 3 * sb + probs_grads * t
    # On SDPA's math path the layer's backward peaks inside the attention, after the MLP's saved tensors are
    # gone: the probabilities and their gradients instead of the whole layer.
    attention = math_attention_bytes_per_token(shape, s) * t
    if s.gradient_checkpointing:
        resident = (min(2, shape.n_layers) if s.checkpoint_offload else shape.n_layers) * t * shape.hidden * sb
        layer = max(layer_saved + layer_grads, attention) + grads
    else:
        resident = shape.n_layers * (layer_saved + attention // 4)
        layer = max(layer_grads, attention) + grads
    # The head: final norm input and output, then either fp32 log-probabilities of every trained position
    # (plus a tanh output with soft-capping) and, in backward, two chunks of gradients; or Liger's fused
    # kernel, which keeps only the hidden-state gradient and a chunk of logits about as large as the hidden
    # states.
    final = t * shape.hidden * (sb + FP32)
    if s.fused_head:
        head = (
            final
            + s.trained * shape.hidden * sb * 3
            + fused_chunk_rows(s.trained, shape.vocab, s.compute_bytes) * shape.vocab * s.compute_bytes
        )
    else:
        chunk = min(HEAD_CHUNK, s.trained)
        head = final + s.trained * shape.vocab * FP32 + 2 * chunk * shape.vocab * FP32
    # Dequantizing the widest 4-bit weight to the compute dtype for a matmul, and the libraries' workspaces.
    widest = max(i * o for _, i, o in shape.layer_linears)
    workspace = (widest * s.compute_bytes if s.bits == 4 else 0) + LIBRARY_WORKSPACE
    return Estimate(
        weights,
        adapter_fwd,
        resident,
        layer,
        head,
        workspace,
        parts={"gc": int(s.gradient_checkpointing), "layer_per_token": per_token},
    )
