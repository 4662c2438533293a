"""One rank of the multi-GPU bench (:mod:`kielo.bench.multigpu`): join the run the launcher describes, load the
variant, shard it (FSDP variants), time its optimizer steps and, on rank 0, write what all ranks measured.

kielo's variants step through the training loop's own distributed step (:func:`kielo.train.step.gradient_step`:
rank r computes micro-batches r, r + N, ... of the step, the trained-token count and the LoRA gradients summed
over the ranks; FSDP reduce-scatters them instead). The stock recipe computes the same micro-batches of each
step per rank with its model's own loss, and accelerate's FSDP2 reduces its gradients.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from kielo.bench.cases import Case, Registry, Variant, parse_case
from kielo.bench.data import full_examples, micro_batches
from kielo.bench.models import Loaded, load, set_checkpointing, trainable
from kielo.bench.steps import optimizer, stock_step
from kielo.bench.worker import sync
from kielo.errors import KieloError
from kielo.train.distributed import World, broadcast_parameters, check_accumulation, gather_objects, init_world, shutdown, sum_values


class StepBatches:
    """The micro-batches of every step, in the order the training loop's layout gives them (``batch(i)``:
    micro-batch i of the run, step s's being s * accumulation .. (s + 1) * accumulation - 1)."""

    def __init__(self, steps: list[list]):
        self.steps = steps
        self.flat = [b for micro in steps for b in micro]

    def batch(self, i: int):
        return self.flat[i]


def step_batches(args, world: World, layout: str, mbs: int, vocab: int, pad_id: int) -> StepBatches:
    """Data a for ``world.size`` ranks: per step ``batch`` rows of ``seq`` tokens for each rank, so every rank
    computes the micro-batches the single-process run computes (the same count and shapes; other tokens)."""
    steps = full_examples(args.warmup_a + args.timed_a, args.batch * world.size, args.seq, vocab, seed=1)
    return StepBatches([micro_batches(ex, layout, mbs, args.max_length, pad_id) for ex in steps])


def _prepare(loaded: Loaded, variant: Variant, case: Case, world: World, device: torch.device):
    """The model to step and its optimizer: kielo's LoRA made equal on all ranks (as the trainer does), then
    sharded for fsdp; the stock recipe through accelerate."""
    model = loaded.model
    if variant.stack == "stock" and variant.distributed == "fsdp":
        from kielo.bench.stock_fsdp import shard_stock

        return shard_stock(model, device)
    set_checkpointing(model, case.gc)
    params = [p for _, p in trainable(model)]
    broadcast_parameters(world, params)
    if variant.distributed == "fsdp" and world.active:
        from kielo.train import fsdp

        fsdp.shard_model(model)
        params = [p for _, p in trainable(model)]
    return model, optimizer(loaded, params, device)


def run_case(loaded: Loaded, name: str, variant: Variant, case: Case, args, world: World, device: torch.device) -> dict | None:
    """Time warm-up + timed steps of ``case`` on every rank; the result on rank 0 (None on the others)."""
    vocab = loaded.model.config.vocab_size
    data = step_batches(args, world, loaded.layout, case.mbs, vocab, pad_id=vocab - 1)
    accumulation = len(data.steps[0])
    check_accumulation(world, accumulation)
    model, opt = _prepare(loaded, variant, case, world, device)
    params = [p for p in model.parameters() if p.requires_grad]
    sharded = variant.distributed == "fsdp" and world.active
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, times, step_tokens, rank_tokens = [], [], [], 0
    for step in range(len(data.steps)):
        mine = [data.batch(step * accumulation + k) for k in world.micro_offsets(accumulation)]
        sync(device)
        t0 = time.perf_counter()
        if loaded.path is None:
            loss = stock_step(model, mine, device)
            (real,) = sum_values(world, sum(b.real_tokens for b in mine))
        else:
            from kielo.train.step import gradient_step

            work = gradient_step(model, data, step, accumulation, device, loaded.path.loss, params, world, sharded)
            loss, real = work.loss, work.real_tokens
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        step_tokens.append(int(real))
        rank_tokens += sum(b.real_tokens for b in mine)
    warm = args.warmup_a
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # Each rank's own count and time: the run's tokens/s divides all ranks' tokens by the slowest rank's time.
    # Unsharded, every rank must end with the same LoRA weights (its gradients were the step's sum over the
    # ranks); the weights' sum, per rank, shows it.
    lora_sum = None if sharded else float(sum(p.detach().double().sum() for p in params))
    mine_info = {"tokens_per_step": rank_tokens / len(times), "timed_s": sum(times[warm:]), "peak_gib": peak, "lora_sum": lora_sum}
    ranks = gather_objects(world, mine_info)
    del opt
    if not world.main:
        return None
    timed_s = max(r["timed_s"] for r in ranks)
    peaks = [r["peak_gib"] for r in ranks]
    return {
        "variant": name,
        "case": case.name,
        "data": case.data,
        "mbs": case.mbs,
        "gc": case.gc,
        "processes": world.size,
        "distributed": variant.distributed or ("ddp" if world.active else "none"),
        "steps": len(times),
        "warmup": warm,
        "micro_batches_per_rank": len(mine),
        "real_tokens_per_step": round(sum(step_tokens) / len(step_tokens)),
        "rank_tokens_per_step": [round(r["tokens_per_step"]) for r in ranks],
        "first_step_s": round(times[0], 3),
        "median_step_s": round(sorted(times[warm:])[len(times[warm:]) // 2], 4),
        "tok_s": round(sum(step_tokens[warm:]) / timed_s),
        "peak_gib": round(max(peaks), 2) if peak is not None else None,
        "peak_gib_ranks": [round(p, 2) for p in peaks] if peak is not None else None,
        "rank_lora_sums": [r["lora_sum"] for r in ranks],
        "losses": [round(x, 5) for x in losses],
        "step_times": [round(t, 4) for t in times],
    }


def worker(args, registry: Registry) -> None:
    """This rank's share of one variant's cases; rank 0 writes the results (after each case) to --result. A user
    mistake found here (every rank finds the same one) becomes each remaining case's error."""
    world = init_world("auto")
    device = torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    variant = registry.variants[args.worker]
    texts = args.worker_cases.split(",")
    results: list[dict] = []

    def record(r: dict | None) -> None:
        if r is None:
            return
        print("RESULT", json.dumps({k: v for k, v in r.items() if k not in ("losses", "step_times")}), flush=True)
        results.append(r)
        Path(args.result).write_text(json.dumps(results))

    try:
        t0 = time.perf_counter()
        loaded = load(variant, Path(args.model_dir), device, max(args.seq, args.max_length))
        load_s = round(time.perf_counter() - t0, 1)
        for text in texts:
            r = run_case(loaded, args.worker, variant, parse_case(text, registry.options), args, world, device)
            record(r and {**r, "load_s": load_s})
    except KieloError as e:
        for text in texts[len(results) :]:
            record({"variant": args.worker, "case": text, "processes": world.size, "error": str(e)} if world.main else None)
    finally:
        shutdown(world)
