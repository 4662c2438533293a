"""Choose micro-batch size and gradient checkpointing so that a training step fits the GPU.

The effective batch (``micro_batch_size x gradient_accumulation``) never changes: the planner only trades
micro-batch size against accumulation, and recomputation against memory. ``fit`` keeps the configured
settings when they fit and otherwise takes the fastest smaller ones that do; ``fastest`` takes the fastest
that fit: no checkpointing before checkpointing, then the biggest micro-batch (fewer, wider micro-batches
ran faster in the benchmark: each pays the dequantization of every 4-bit weight).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.model.device import COMPUTE_DTYPES
from kielo.model.offload import offloaded_bytes
from kielo.model.precision import Precision, resolved_precision
from kielo.plan.memory import GIB, Estimate, Setup
from kielo.plan.parallel import per_gpu_estimate
from kielo.plan.shape import ModelShape

log = logging.getLogger(__name__)

# An estimate must stay this far under the budget to count as fitting: estimates were within +-10% of the
# measured peaks on the benchmark shapes, and the allocator's fragmentation takes a little more.
HEADROOM = 0.9


@dataclass(frozen=True)
class DataSize:
    """The training rows' sizes that set activation memory."""

    row_width: int  # positions in the widest row (a packed row's capacity, or the longest example)
    trained_per_row: int  # most trained positions in one row
    packing: bool


def data_size(items: list, packing: bool, max_length: int) -> DataSize:
    """From encoded examples (``kielo.data.encode.Encoded``): the widest row and the most trained positions
    in one row, of the examples or (packing) of the rows first-fit packing makes of them in this order."""
    from kielo.data.batches import pack_rows, trained_count

    rows = pack_rows(items, max_length) if packing else [[it] for it in items]
    width = max(sum(len(it.input_ids) for it in row) for row in rows)
    trained = max(sum(trained_count(it.labels) for it in row) for row in rows)
    return DataSize(width, trained, packing)


def full_rows(config: Config) -> DataSize:
    """No data at hand: every row ``data.max_length`` long and trained throughout (the worst case)."""
    n = config.data.max_length
    return DataSize(n, n, config.data.packing)


def setup_for(
    config: Config,
    precision: Precision,
    data: DataSize,
    micro_batch_size: int,
    checkpointing: bool,
    shape: ModelShape,
    host: bool = False,
) -> Setup:
    """The memory-relevant setup of ``config`` with the given micro-batch size and checkpointing, on a CUDA GPU
    (what the plan is for), for a model of ``shape``; ``host``: this machine runs it, so checkpoint_offload auto
    weighs its host memory as the load does (kielo.model.offload.offload_on)."""
    from kielo.model.offload import offload_on

    q, lora = config.quantization, config.lora
    compute = COMPUTE_DTYPES.get(q.compute_dtype, torch.bfloat16).itemsize  # auto is bf16/fp16 on CUDA
    trained = min(micro_batch_size * data.trained_per_row, micro_batch_size * data.row_width)
    return Setup(
        bits=q.bits,
        double_quant=q.double_quant,
        compute_bytes=compute,
        stream_bytes=precision.stream.itemsize,
        liger=precision.liger,
        fused_head=precision.liger,
        lora_r=lora.r,
        lora_targets=lora.target_modules,
        lora_dropout=lora.dropout,
        optimizer=config.training.optimizer,
        gradient_checkpointing=checkpointing,
        checkpoint_offload=offload_on(
            replace(config.training, gradient_checkpointing=checkpointing),
            "cuda",
            shape.hidden,
            offloaded_bytes(shape.n_layers, micro_batch_size * data.row_width, shape.hidden, precision.stream.itemsize)
            if host
            else None,
        ),
        tokens=micro_batch_size * data.row_width,
        row_width=data.row_width,
        trained=trained,
        masked=data.packing or micro_batch_size > 1,
    )


@dataclass
class MemoryPlan:
    mode: str
    micro_batch_size: int
    gradient_accumulation: int
    gradient_checkpointing: bool
    estimate: Estimate
    budget: int  # bytes this process may use on the GPU
    fits: bool
    changed: list[str] = field(default_factory=list)
    gpus: int = 1  # processes (one GPU each) the run is spread over
    strategy: str = "ddp"  # training.distributed: how it is spread (kielo.plan.parallel)
    load: int = 0  # bytes on one GPU while loading, before FSDP shards the model
    offloaded: int = 0  # pinned host bytes of the checkpointed layer inputs per process (0: they stay on the GPU)

    @property
    def peak(self) -> int:
        """The larger of the step's estimated peak and the loading peak, per GPU."""
        return max(self.estimate.total, self.load)

    def describe(self) -> str:
        head = (
            f"memory plan ({self.mode}): micro_batch_size {self.micro_batch_size} x gradient_accumulation "
            f"{self.gradient_accumulation}, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
        )
        where = ""
        if self.gpus > 1:
            head += f", {self.strategy} over {self.gpus} GPUs (micro-batch and peak per GPU)"
            where = " per GPU"
        lines = [
            head,
            f"  estimated peak{where} {self.estimate.describe()}",
            f"  budget{where} {self.budget / GIB:.2f} GiB (estimates must stay under {HEADROOM:.0%} of it)",
        ]
        if self.offloaded:
            lines.insert(2, f"  checkpointed layer inputs in pinned host memory: {self.offloaded / GIB:.2f} GiB per process")
        if self.strategy == "fsdp" and self.gpus > 1:
            lines.insert(2, f"  loading: the whole 4-bit model on rank 0's GPU before sharding, {self.load / GIB:.2f} GiB")
        if self.changed:
            lines.append("  changed from the config: " + "; ".join(self.changed))
        if not self.fits:
            lines.append("  WARNING: nothing fits the budget; this is the leanest setting")
        return "\n".join(lines)


def _divisors_down(n: int, start: int) -> list[int]:
    return [d for d in range(min(start, n), 0, -1) if n % d == 0]


def candidates(config: Config, mode: str) -> list[tuple[int, bool]]:
    """(micro-batch size, checkpointing) to try, in order of preference."""
    t = config.training
    effective = t.micro_batch_size * t.gradient_accumulation
    if mode == "fastest":
        sizes = _divisors_down(effective, effective)
        return [(m, False) for m in sizes] + [(m, True) for m in sizes]
    # fit: the configured setting first, then smaller micro-batches, then (if it was off) checkpointing.
    sizes = _divisors_down(effective, t.micro_batch_size)
    order = [(m, t.gradient_checkpointing) for m in sizes]
    if not t.gradient_checkpointing:
        order += [(m, True) for m in sizes]
    return order


def make_plan(
    config: Config,
    shape: ModelShape,
    precision: Precision,
    data: DataSize,
    budget: int,
    mode: str = "fit",
    gpus: int = 1,
    strategy: str = "ddp",
    host: bool = False,
) -> MemoryPlan:
    """The first candidate whose estimated peak (per GPU, when spread over ``gpus`` by ``strategy``) fits
    ``HEADROOM`` of ``budget``, else the leanest one (``host``: planned on the machine that runs it)."""
    t = config.training
    effective = t.micro_batch_size * t.gradient_accumulation
    spread = replace(config, training=replace(t, distributed=strategy))  # checkpoint_offload auto depends on it
    tried = []
    for mbs, gc in candidates(config, mode):
        setup = setup_for(spread, precision, data, mbs, gc, shape, host)
        est = per_gpu_estimate(shape, setup, gpus, strategy)
        tried.append((mbs, gc, est, setup))
        if est.total <= HEADROOM * budget:
            break
    else:
        mbs, gc, est, setup = min(tried, key=lambda x: x[2].total)
    fits = est.total <= HEADROOM * budget
    changed = []
    if mbs != t.micro_batch_size:
        changed.append(
            f"micro_batch_size {t.micro_batch_size} -> {mbs}, gradient_accumulation "
            f"{t.gradient_accumulation} -> {effective // mbs} (same {effective} per step)"
        )
    if gc != t.gradient_checkpointing:
        changed.append(f"gradient_checkpointing {'on' if t.gradient_checkpointing else 'off'} -> {'on' if gc else 'off'}")
    offloaded = offloaded_bytes(shape.n_layers, setup.tokens, shape.hidden, setup.stream_bytes) if setup.checkpoint_offload else 0
    return MemoryPlan(mode, mbs, effective // mbs, gc, est.step, budget, fits, changed, gpus, est.strategy, est.load, offloaded)


def pick_strategy(plans: dict[str, MemoryPlan]) -> MemoryPlan:
    """Of one run's plans per strategy (``kielo.plan.parallel.STRATEGIES`` order): DDP when it fits (no
    per-layer all-gathers, so faster), else FSDP when that fits, else the one with the lower peak."""
    return next((p for p in plans.values() if p.fits), None) or min(plans.values(), key=lambda p: p.peak)


def check_plan(plan: MemoryPlan, model_name: str) -> None:
    """Refuse a run whose leanest setting is estimated well over the budget (beyond the estimates' error)."""
    if plan.peak > plan.budget / HEADROOM:
        raise KieloError(
            f"training {model_name} needs about {plan.peak / GIB:.1f} GiB of GPU memory even with "
            f"micro_batch_size {plan.micro_batch_size} and gradient checkpointing, but {plan.budget / GIB:.1f} GiB "
            "is available",
            "lower data.max_length, use --training.stream_dtype compute (and kielo[gpu] for Liger's fused head), "
            "--quantization.bits 4, or a bigger GPU",
        )


def apply_plan(config: Config, plan: MemoryPlan) -> Config:
    """``config`` with the plan's micro-batch size, accumulation and checkpointing."""
    t = replace(
        config.training,
        micro_batch_size=plan.micro_batch_size,
        gradient_accumulation=plan.gradient_accumulation,
        gradient_checkpointing=plan.gradient_checkpointing,
    )
    return replace(config, training=t)


def gpu_budget(device: torch.device) -> int:
    """Bytes this process can use on ``device``: free memory plus what it already holds (the weights)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free) + torch.cuda.memory_allocated(device)


def plan_memory(config: Config, model_config, items: list, device: torch.device, gpus: int = 1) -> MemoryPlan:
    """The memory plan of a run with ``config`` (resolved: its precision concrete) on ``device``, a GPU, for
    the loaded model's transformers config and the encoded training examples, per GPU when spread over
    ``gpus`` processes by ``training.distributed``; refused (KieloError) when even the leanest setting is well
    over the budget, naming FSDP when it would fit. Call it after the weights are loaded: they count."""
    from kielo.plan.shape import shape_from_config

    data = data_size(items, config.data.packing, config.data.max_length)
    shape = shape_from_config(model_config)
    precision, budget, mode = resolved_precision(config), gpu_budget(device), config.training.memory_plan
    strategy = config.training.distributed
    plan = make_plan(config, shape, precision, data, budget, mode, gpus, strategy, host=True)
    log.info("%s", plan.describe())
    if gpus > 1 and strategy == "ddp" and not plan.fits:
        sharded = make_plan(config, shape, precision, data, budget, mode, gpus, "fsdp", host=True)
        if sharded.fits:
            raise KieloError(
                f"training {config.model.name} with ddp needs about {plan.peak / GIB:.1f} GiB per GPU, more than the "
                f"{budget / GIB:.1f} GiB available; sharded over {gpus} GPUs (fsdp) it needs about {sharded.peak / GIB:.1f} GiB",
                "add --training.distributed fsdp",
            )
    check_plan(plan, config.model.name)
    return plan
