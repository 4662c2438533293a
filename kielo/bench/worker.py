"""One variant's cases in this process (the bench runs each variant in its own: clean peak memory, and Liger and
Unsloth patch classes globally): load once, reset the LoRA weights to the same start for each case, time its
optimizer steps, keep the first two steps' LoRA gradients for the parity check."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from kielo.bench.cases import Case, Registry, Variant, parse_case
from kielo.bench.data import case_steps, example_tokens, micro_batches, warmup_steps
from kielo.bench.estimate import planned
from kielo.bench.flops import geometry, step_flops
from kielo.bench.models import Loaded, load, set_checkpointing, trainable
from kielo.bench.steps import head_name, optimizer, step_context, step_function
from kielo.errors import KieloError


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grads_file(grads_dir: Path, variant: str, case: str, step: int) -> Path:
    """Where a case's LoRA gradients of one of its first two steps are kept (read by the parity check)."""
    return grads_dir / f"{variant}-{case.replace('/', '_')}-{step}.pt"


def compile_layers(model) -> None:
    """torch.compile each decoder layer in place (it stays compiled for the worker's later cases)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for block in model.modules():
        if isinstance(block, GradientCheckpointingLayer):
            block.compile()


def write_memtrace(result_dir: Path, name: str, case: Case) -> None:
    """The CUDA allocations recorded since recording began, as a snapshot next to the results."""
    import pickle

    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    (result_dir / f"memtrace-{name}-{case.name.replace('/', '_')}.pickle").write_bytes(pickle.dumps(snap))


def run_case(loaded: Loaded, name: str, variant: Variant, case: Case, steps: list, args, device, init: dict, pad_id: int) -> dict:
    """Time warm-up + timed optimizer steps of one case; dump the LoRA gradients of the first two steps."""
    model = loaded.model
    params = trainable(model)
    with torch.no_grad():
        for n, p in params:
            p.copy_(init[n])
            p.grad = None
    if variant.stack != "unsloth":  # Unsloth's checkpointing is fixed at load (--cases allows no gc option there)
        set_checkpointing(model, case.gc)
    if case.compile:
        compile_layers(model)
    if case.data == "p":
        from kielo.bench.dpo import pair_batches

        micro = [pair_batches(ex, loaded.path, case.mbs, pad_id) for ex in steps]
    else:
        micro = [micro_batches(ex, loaded.layout, case.mbs, args.max_length, pad_id) for ex in steps]
    opt = optimizer(loaded, [p for _, p in params], device)
    step_fn = step_function(loaded, case)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warm = warmup_steps(case.data, args)
    memtrace = case.memtrace and device.type == "cuda"
    losses, times = [], []
    for i, mb in enumerate(micro):
        sync(device)
        if memtrace and i == 0:
            torch.cuda.memory._record_memory_history(max_entries=300000)
        t0 = time.perf_counter()
        with step_context(case, device):
            losses.append(step_fn(model, mb, device))
        sync(device)
        t1 = time.perf_counter()
        if memtrace and i == 0:
            write_memtrace(Path(args.result).parent, name, case)
        if i < 2:  # not timed: kept for the gradient cosine against stock
            grads = torch.cat([p.grad.detach().float().cpu().flatten() for _, p in params])
            torch.save(grads, grads_file(Path(args.grads_dir), name, case.name, i))
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(t1 - t0 + time.perf_counter() - t2)
    timed = times[warm:]
    if case.profile and device.type == "cuda":
        profile_step(model, micro[-1], step_fn, case, device)
    # Real tokens counted from the examples, not the batches: a layout that drops or pads tokens shows it.
    real = [sum(example_tokens(e) for e in ex) for ex in steps]
    slots = [sum(b.input_ids.numel() for b in mb) for mb in micro]
    if loaded.layout in ("padding_free", "trl_packed") and slots != real:
        raise RuntimeError(f"{name}: the {loaded.layout} layout is not padding-free ({sum(slots)} slots for {sum(real)} tokens)")
    del opt
    from transformers import AutoConfig  # not at import: Unsloth must be imported before transformers

    geo = geometry(AutoConfig.from_pretrained(args.model_dir))
    if case.data == "p":
        flops = [step_flops(geo, [n for p in ex for n in (p.chosen.length, p.rejected.length)], reference=True) for ex in steps]
    else:
        flops = [step_flops(geo, [e.length for e in ex]) for ex in steps]
    model_tflops = sum(flops[warm:]) / sum(timed) / 1e12
    return {
        "variant": name,
        "case": case.name,
        "head": head_name(loaded, case),
        **case.fields(),  # after "head": an option that names its head records that name
        "steps": len(micro),
        "warmup": warm,
        "micro_batches_per_step": len(micro[0]),
        "first_step_s": round(times[0], 3),
        "median_step_s": round(sorted(timed)[len(timed) // 2], 4),
        "tok_s": round(sum(real[warm:]) / sum(timed)),
        **({"pairs_s": round(sum(len(ex) for ex in steps[warm:]) / sum(timed), 2)} if case.data == "p" else {}),
        "real_tokens_per_step": round(sum(real) / len(real)),
        "padding_pct": round(100 * (1 - sum(real) / sum(slots)), 1),
        "trained_tokens_per_step": round(sum(sum(b.trained_tokens for b in m) for m in micro) / len(micro)),
        "model_tflops": float(f"{model_tflops:.4g}"),  # 4 significant digits: a CPU smoke run is far below 0.1
        "mfu": round(model_tflops / args.peak_tflops, 4) if args.peak_tflops else None,
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        **planned(loaded, variant, case, micro),
        "losses": [round(x, 5) for x in losses],
        "step_times": [round(t, 4) for t in times],
    }


def profile_step(model, micro, step_fn, case: Case, device) -> None:
    """One more step (not timed, gradients discarded) under torch.profiler: where a step's GPU time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with step_context(case, device):
            step_fn(model, micro, device)
        sync(device)
    for p in model.parameters():
        p.grad = None
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"PROFILE {case.name}: GPU kernel time {total / 1e3:.0f} ms in one step; top kernels:", flush=True)
    for e in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:25]:
        print(
            f"PROFILE {e.self_device_time_total / 1e3:9.1f} ms {100 * e.self_device_time_total / total:5.1f}% "
            f"x{e.count:<5} {e.key[:110]}",
            flush=True,
        )


def lora_start(loaded: Loaded, variant: Variant, grads_dir: Path) -> dict:
    """The LoRA weights every case starts from: kielo's and stock's seeded peft adapters start equal (stock's is
    saved for later variants); Unsloth seeds its own, so it takes stock's."""
    init = {n: p.detach().cpu().clone() for n, p in trainable(loaded.model)}
    stock_init = grads_dir / "lora-init-stock.pt"
    if variant.stack == "stock":
        torch.save(init, stock_init)
    elif variant.stack == "unsloth":
        from kielo.bench.unsloth import init_from

        if not stock_init.is_file():
            raise KieloError("the unsloth variant starts from stock's LoRA weights", "put stock first in --cases")
        init = init_from(init, torch.load(stock_init, weights_only=True))
    return init


def worker(args, registry: Registry) -> None:
    """One variant in this process: load once, run its cases, write their results as JSON (after each case, so
    a later crash keeps the earlier ones). A user mistake found here becomes each remaining case's error."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variant = registry.variants[args.worker]
    texts = args.worker_cases.split(",")
    results: list[dict] = []
    result_file = Path(args.result)

    def record(r: dict) -> None:
        print("RESULT", json.dumps({k: v for k, v in r.items() if k not in ("losses", "step_times")}), flush=True)
        results.append(r)
        result_file.write_text(json.dumps(results))

    t0 = time.perf_counter()
    try:
        loaded = load(variant, Path(args.model_dir), device, max(args.seq, args.max_length))
        init = lora_start(loaded, variant, Path(args.grads_dir))
    except KieloError as e:
        for text in texts:
            record({"variant": args.worker, "case": text, "error": str(e)})
        return
    load_s = round(time.perf_counter() - t0, 1)
    vocab = loaded.model.config.vocab_size
    for text in texts:
        case = parse_case(text, registry.options)
        try:
            r = run_case(loaded, args.worker, variant, case, case_steps(case.data, args, vocab), args, device, init, pad_id=vocab - 1)
        except torch.cuda.OutOfMemoryError as e:
            r = {"variant": args.worker, "case": text, "error": f"out of memory: {str(e).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        record({**r, "load_s": load_s})
