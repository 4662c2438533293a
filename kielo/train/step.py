"""The training step, built from explicit parts instead of module-level functions looked up at run time.

Whoever runs steps (the training loop, the benchmark, the GPU tests) receives the loss head as an argument
(:class:`TrainingPath`, resolved once from the precision), so another objective or a research head plugs in
without replacing any module's function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kielo.data.batches import BatchLayout
from kielo.model.precision import Precision
from kielo.train.distributed import SINGLE, World, sum_gradients, sum_values
from kielo.train.faults import fault_point
from kielo.train.loss import LossFn, loss_head

# How each LoRA layer computes (kielo.model.lora_forward): "fused" = kielo's branch in the input's dtype with
# the fused 4-bit + LoRA node where it applies; "unfused" = the same branch without that node; "peft" = peft's
# own forward.
LORA_FORWARDS = ("fused", "unfused", "peft")


@dataclass(frozen=True)
class TrainingPath:
    """How a training step computes: the precision and kernel set, the LoRA forward and the loss head."""

    precision: Precision
    loss: LossFn
    lora_forward: str = "fused"


def training_path(precision: Precision, lora_forward: str = "fused") -> TrainingPath:
    """The product's path for ``precision``: Liger's fused head with Liger's kernels, else the chunked head."""
    if lora_forward not in LORA_FORWARDS:
        raise ValueError(f"lora_forward must be one of {LORA_FORWARDS}, not {lora_forward!r}")
    return TrainingPath(precision, loss_head(precision.liger), lora_forward)


def accumulate_gradients(model, micro: list, device: torch.device, loss: LossFn, n_trained: int | None = None) -> float:
    """Backward over the micro-batches of one optimizer step; returns the step's mean token loss.

    Each micro-batch's loss sum is divided by the trained tokens of the whole accumulated batch, not by its
    own count: otherwise a short micro-batch's tokens would weigh more than a long one's. In a distributed
    step ``n_trained`` is that count over all ranks' micro-batches, and the return value this rank's share of
    the step's mean (the ranks' shares add up to it).
    """
    n_trained = max(1, sum(b.trained_tokens for b in micro) if n_trained is None else n_trained)
    total = 0.0
    for b in micro:
        s, _ = loss(model, b.to(device))
        (s / n_trained).backward()
        total += float(s.detach())
    return total / n_trained


@dataclass
class StepWork:
    """What one optimizer step computed, over all ranks: mean token loss and the micro-batches' token counts."""

    loss: float
    real_tokens: int
    trained_tokens: int


def gradient_step(
    model,
    layout: BatchLayout,
    step: int,
    accumulation: int,
    device: torch.device,
    loss: LossFn,
    params: list,
    world: World = SINGLE,
    sharded: bool = False,
) -> StepWork:
    """Gradients of optimizer step ``step`` (0-based) in ``params``: this rank's share of the step's
    micro-batches (``world.micro_offsets``), normalised by the step's trained tokens over all ranks and summed
    over the ranks, so every rank holds the single-process run's gradient of the whole step (``sharded``: FSDP
    reduces them, each rank keeping its shard of that gradient)."""
    micro = [layout.batch(step * accumulation + k) for k in world.micro_offsets(accumulation)]
    trained, real = (int(v) for v in sum_values(world, sum(b.trained_tokens for b in micro), sum(b.real_tokens for b in micro)))
    share = accumulate_gradients(model, micro, device, loss, n_trained=trained)
    if sharded:
        # FSDP averaged the shards over the ranks; the step's gradient is their sum (kielo.train.fsdp).
        for p in params:
            if p.grad is not None:
                p.grad.mul_(world.size)
    else:
        sum_gradients(world, params)
    (mean,) = sum_values(world, share)
    return StepWork(mean, real, trained)


@torch.no_grad()
def evaluate_loss(
    model, layout: BatchLayout, device: torch.device, loss: LossFn, world: World = SINGLE, sharded: bool = False
) -> dict:
    """Mean token loss and perplexity over all batches of a layout (each rank takes every N-th batch).
    ``sharded``: every forward of an FSDP model is a collective, so all ranks run as many; a rank past the
    last batch runs the first one again and counts nothing."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    end = -(-layout.per_epoch // world.size) * world.size if sharded else layout.per_epoch
    for i in range(world.rank, end, world.size):
        s, n = loss(model, layout.batch(i if i < layout.per_epoch else 0).to(device))
        if i >= layout.per_epoch:
            continue
        total += float(s.detach())
        count += n
        if i == world.rank:
            fault_point("evaluate")
    if was_training:
        model.train()
    total, count = sum_values(world, total, count)
    count = int(count)
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "tokens": count}


@dataclass(frozen=True)
class SftObjective:
    """Next-token loss on the answers: the training loop's objective when ``training.objective`` is sft.

    The loop calls every objective the same way (``kielo.train.preference.PreferenceObjective`` is the other):
    ``accumulate`` for a step's backward, ``evaluate`` for validation, ``prepare`` once before the first step."""

    loss: LossFn
    # A step's loss far above its running value means divergence (kielo.train.guard).
    loss_spikes: bool = True

    def accumulate(self, model, micro: list, device: torch.device) -> tuple[float, dict]:
        return accumulate_gradients(model, micro, device, self.loss), {}

    def evaluate(self, model, layout: BatchLayout, device: torch.device) -> dict:
        return evaluate_loss(model, layout, device, self.loss)

    def describe(self, result: dict) -> str:
        return f"loss {result['loss']:.4f} (perplexity {result['perplexity']:.2f})"

    def prepare(self, *args, **kwargs) -> None:
        """Nothing to compute before the first step."""
