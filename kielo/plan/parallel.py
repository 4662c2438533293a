"""Peak GPU memory per card when a run is spread over several GPUs, for each way kielo spreads it.

- ``ddp``: every rank holds the whole 4-bit base, the LoRA with its gradients and optimizer state, and
  its own micro-batch's activations: the single-GPU estimate, plus the flat buffer the LoRA gradients are
  summed through (:func:`kielo.train.distributed.sum_gradients`).
- ``fsdp``: each decoder layer is its own FSDP2 unit (:func:`kielo.train.fsdp.shard_model`), so every rank
  holds 1/N of the 4-bit weights, of the LoRA, of its gradients and of the optimizer state; while a layer
  computes, its weights are all-gathered, and FSDP2 prefetches the next one, so two layers are whole at a
  time. The root unit (embedding, final norm) stays gathered from forward to the end of backward, and the
  output head is not sharded (:func:`kielo.train.fsdp.shard_model` says why): counted whole plus a shard.
  Activations are those of the rank's own micro-batch, as under DDP. Loading: rank 0 loads the whole
  4-bit model onto its GPU before ``fully_shard`` splits it, a peak of its own (the other ranks build the
  model on the meta device and receive their shards, :mod:`kielo.train.fsdp_load`); every card must fit it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kielo.plan.memory import FP32, Estimate, Setup, estimate, quantized_bytes_per_param
from kielo.plan.shape import ModelShape

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class GpuEstimate:
    """One card's estimated training peak under a strategy, and (fsdp) the peak while loading."""

    strategy: str
    gpus: int
    step: Estimate
    load: int  # bytes on one card right after loading, before sharding

    @property
    def total(self) -> int:
        return max(self.step.total, self.load)


def _layer_lora(shape: ModelShape, s: Setup) -> int:
    return shape.lora_params(s.lora_r, s.lora_targets) // shape.n_layers


def per_gpu_estimate(shape: ModelShape, s: Setup, gpus: int, strategy: str) -> GpuEstimate:
    """The peak on each of ``gpus`` cards of a step with setup ``s`` (one rank's micro-batch) under ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    one = estimate(shape, s)
    n_lora = shape.lora_params(s.lora_r, s.lora_targets)
    if gpus <= 1 or strategy == "ddp":
        allreduce = FP32 * n_lora if gpus > 1 else 0  # torch.cat of every LoRA gradient, summed in place
        return GpuEstimate("ddp", gpus, replace(one, workspace=one.workspace + allreduce), one.weights + one.workspace)
    unquantized = s.stream_bytes if s.bits else s.compute_bytes
    layer_quantized = int(
        shape.quantized_params // shape.n_layers * quantized_bytes_per_param(s.bits, s.double_quant, s.compute_bytes)
    )
    root = (shape.embedding_params + shape.head_params + shape.other_params) * unquantized
    # Sharded 4-bit layers plus two whole ones (computing, prefetched); the root whole and its own shard.
    weights = (one.weights - root) // gpus + 2 * layer_quantized + root + root // gpus
    # LoRA weights and Adam state sharded; two layers' LoRA gathered in the compute dtype.
    state = one.adapter // gpus + 2 * _layer_lora(shape, s) * s.compute_bytes
    # The single-GPU layer term carries every LoRA gradient; here each rank keeps its shard of them, plus one
    # layer's whole fp32 gradients until their reduce-scatter.
    grads = FP32 * n_lora
    layer = one.layer - grads + grads // gpus + 2 * FP32 * _layer_lora(shape, s)
    step = replace(one, weights=weights, adapter=state, layer=layer)
    return GpuEstimate("fsdp", gpus, step, one.weights + one.workspace)


def describe(g: GpuEstimate) -> str:
    """One line: the strategy, the step's peak with its parts and (fsdp) the loading peak."""
    head = f"{g.strategy} on {g.gpus} GPU{'s' if g.gpus > 1 else ''}: per GPU {g.step.describe()}"
    if g.strategy == "fsdp":
        head += f"; loading (the whole 4-bit model on rank 0's GPU before sharding) {g.load / 2**30:.2f} GiB"
    return head
