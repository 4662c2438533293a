"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from kielo.config.schema import TrainingConfig
from kielo.errors import KieloError


def build_optimizer(params: list[torch.nn.Parameter], t: TrainingConfig, device: torch.device):
    """AdamW; the bitsandbytes 8-bit variants (paged or not) keep optimizer state in 8 bits on CUDA."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=device.type == "cuda")
    if device.type != "cuda":
        raise KieloError(f"training.optimizer `{t.optimizer}` needs a CUDA GPU", "use --training.optimizer adamw on CPU")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if t.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then the schedule to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, t: TrainingConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, t.warmup_steps, t.scheduler))
