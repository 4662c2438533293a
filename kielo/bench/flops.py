"""Model FLOPs of a QLoRA step, and the card's measured bf16 matmul rate: the bench's MFU.

MFU here = the FLOPs a step needs (no recomputation counted) x steps/s / the bf16 rate one large GEMM reaches
on the same card in the same run. The FLOPs are the same for every stack on the same data (computed from
the model's shape, not from a stack's modules): per token, each frozen linear weight costs 4 (forward and the
input gradient; no weight gradient), each LoRA weight 6 (forward, input and weight gradients), and attention
12 x heads x head_dim per attended (query, key) pair (forward 4, backward 8), pairs counted per example:
causal, within the sliding window on the layers that have one. Padding costs time but is not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geometry:
    """What a step's FLOPs depend on: the frozen linear weights (decoder and head), the LoRA weights, and per
    decoder layer the attention width and sliding window (None: full causal)."""

    frozen_weights: int
    lora_weights: int
    attention_width: int  # heads x head_dim
    windows: tuple[int | None, ...]


def geometry(config, r: int = 16) -> Geometry:
    """The bench model's geometry from its transformers config, with LoRA of rank ``r`` on every linear
    projection of the decoder layers (the bench's all-linear), built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            frozen += module.in_features * module.out_features
            if name.split(".")[-1] != "lm_head":
                lora += r * (module.in_features + module.out_features)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None)
    windows = tuple(window if t == "sliding_attention" else None for t in types)
    return Geometry(frozen, lora, heads * head_dim, windows)


def attended_pairs(n: int, window: int | None) -> int:
    """(query, key) pairs of causal attention over ``n`` tokens, each query seeing at most ``window`` keys."""
    if window is None or n <= window:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def step_flops(geo: Geometry, lengths: list[int], reference: bool = False) -> float:
    """The model FLOPs of one optimizer step over examples of these lengths (see the module's definition); with
    ``reference`` (DPO) one more forward of every row through the frozen weights alone (2 per weight and token,
    attention 4 x heads x head_dim per attended pair)."""
    tokens = sum(lengths)
    linear = tokens * (4 * geo.frozen_weights + 6 * geo.lora_weights)
    pairs = sum(attended_pairs(n, w) for n in lengths for w in geo.windows)
    total = linear + 12 * geo.attention_width * pairs
    if reference:
        total += tokens * 2 * geo.frozen_weights + 4 * geo.attention_width * pairs
    return float(total)


def measure_bf16_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """TFLOP/s of one large bf16 GEMM on ``device`` (median of three timings of ``repeats`` products): the
    card's attainable matmul rate, measured rather than taken from a datasheet (clocks and power limits vary)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(3):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        torch.cuda.synchronize(device)
        rates.append(2 * size**3 * repeats / (time.perf_counter() - t) / 1e12)
    return round(statistics.median(rates), 1)
