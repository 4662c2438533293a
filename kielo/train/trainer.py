"""`kielo train`: a LoRA adapter on a (quantized) base model from instruction data.

kielo runs its own loop instead of transformers' Trainer: the loss is computed only at trained positions
(see loss.py), packing needs its own decoder inputs (packing.py), and gradient accumulation must
normalize by the trained tokens of the whole accumulated batch. Each is a few lines here and a fight
with a general trainer's hooks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kielo.config.load import to_dict
from kielo.config.schema import Config
from kielo.data.batches import BatchLayout, eval_batch_size
from kielo.data.pairs import PairLayout
from kielo.data.prepare import is_preference, prepare_data, read_data
from kielo.data.stream import stream_layout
from kielo.errors import KieloError
from kielo.model.bundle import load_bundle
from kielo.model.precision import resolved_precision
from kielo.runs.card import write_card
from kielo.runs.folder import RunFolder, checkpoints_dir, write_side_files
from kielo.runs.lock import run_lock
from kielo.runs.metrics import MetricsLog
from kielo.runs.trackers import check_trackers, final_numbers, open_trackers
from kielo.train import checkpoint as ckpt
from kielo.train.dead_settings import warn_dead_settings
from kielo.train.distributed import (
    SINGLE,
    World,
    any_rank,
    broadcast_object,
    broadcast_parameters,
    check_accumulation,
    gather_objects,
    init_world,
    shutdown,
)
from kielo.train.faults import fault_point
from kielo.train.fsdp_load import rank0_loads, shard_from_rank0
from kielo.train.guard import DivergenceGuard
from kielo.train.interrupt import stop_at_step_boundary, stop_requested
from kielo.train.optim import build_optimizer, build_scheduler
from kielo.train.packing import require_packing_support
from kielo.train.preference import build_objective, preference_summary
from kielo.train.resolve import resolve_training
from kielo.train.resume_state import rng_state, set_rng_state
from kielo.train.step import evaluate_loss, gradient_step, training_path

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def total_steps(config: Config, per_epoch: int) -> int:
    t = config.training
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(t.epochs * per_epoch / t.gradient_accumulation))


def train(config: Config, resume: bool = False, progress: bool = True) -> dict:
    """Train a LoRA adapter as ``config`` says and write it, with everything around it, to ``output_dir``.

    One run at a time holds the folder (a second one is refused). SIGTERM or Ctrl-C stops at the next step
    boundary with a checkpoint. Returns the summary (also written to ``summary.json``), or for a run stopped
    that way ``{"stopped": SIGNAL, "step": ..., "checkpoint": ...}``.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    world = init_world(config.training.device)
    try:
        run = RunFolder(config.output_dir)
        # Log lines (validation results, warnings) go through tqdm.write: each on its own line above the
        # progress bar, instead of being appended to the bar's line.
        with stop_at_step_boundary(), logging_redirect_tqdm():
            if not world.main:  # rank 0 owns the folder: its lock, its checks, its leftovers
                return _train(config, run, _shared_start(world, None), progress, world)
            with contextlib.ExitStack() as held:
                try:
                    run.check(resume)  # before anything is written: a mistake leaves the folder as it was
                    held.enter_context(run_lock(run.path))
                    latest = run.check(resume)  # again, now that no other run can change the folder
                    run.clear_leftovers()
                except KieloError as e:
                    _shared_start(world, e)
                    raise
                return _train(config, run, _shared_start(world, latest), progress, world)
    finally:
        shutdown(world)


def _shared_start(world: World, outcome: Path | KieloError | None) -> Path | None:
    """Rank 0's verdict on the run folder (the checkpoint to resume from, or the error that refuses it) on
    every rank, so the other ranks neither wait forever for a refused run nor resume from another step."""
    if isinstance(outcome, KieloError):
        broadcast_object(world, ("error", outcome.message, outcome.fix))
        return None
    got = broadcast_object(world, ("ok", str(outcome) if outcome is not None else None))
    if got[0] == "error":
        raise KieloError(got[1], got[2])
    return Path(got[1]) if got[1] is not None else None


def _train(config: Config, run: RunFolder, latest: Path | None, progress: bool, world: World = SINGLE) -> dict:
    from tqdm.auto import tqdm

    from kielo.model.adapter import causal_lm, start_adapter
    from kielo.model.load import describe_parameters

    out = run.path
    started = time.time()
    seed_everything(config.training.seed)
    check_trackers(config.training.report_to)
    examples = read_data(config)
    fault_point("data")
    # Under FSDP rank 0 alone reads the weights; the others build the model on the meta device (fsdp_load.py).
    bundle = load_bundle(config, for_training=True, weights=world.main or not rank0_loads(world, config.training.distributed))
    if config.data.packing:
        require_packing_support(bundle.model)
    train_items, val_items, data_report = prepare_data(bundle, examples)
    # From here on `config` is the resolved one: saved beside the run and never changed.
    config, memory_plan = resolve_training(bundle, train_items, run.saved_config() if latest is not None else None, world.size)
    bundle = replace(bundle, config=config)
    t = config.training
    check_accumulation(world, t.gradient_accumulation)
    pad_id = bundle.tokenizer.pad_token_id
    # Evaluation needs no gradients, so it affords bigger batches; sorting by length keeps padding small.
    eval_batch = eval_batch_size(config)
    val_sorted = sorted(val_items, key=lambda it: it.length)
    if is_preference(config):
        # A pair's sides are one packed row where packed rows attend through varlen attention (no padding, no mask).
        packed = t.attention == "varlen"
        layout = PairLayout(train_items, t.micro_batch_size, pad_id, t.seed, packed=packed)
        val_layout = PairLayout(val_sorted, eval_batch, pad_id, t.seed, shuffle=False, packed=packed) if val_items else None
    elif config.data.streaming:  # train_items is the stream's first rows: the memory plan's sample
        layout = stream_layout(config, bundle.encoder, pad_id)
        data_report["train"] = {"streamed": True, "sample_rows": data_report["train"]["total"]}
    else:
        layout = BatchLayout(train_items, t.micro_batch_size, pad_id, t.seed, config.data.packing, config.data.max_length)
    if not is_preference(config):
        val_layout = BatchLayout(val_sorted, eval_batch, pad_id, t.seed, False, shuffle=False) if val_items else None
    steps = total_steps(config, layout.per_epoch)
    warn_dead_settings(config, steps, bool(val_items))
    path = training_path(resolved_precision(config))
    objective = build_objective(config, path)
    if world.active and t.objective != "sft":
        raise KieloError(
            f"training.objective {t.objective} does not run in several processes yet", "train it in one process (without --nproc)"
        )
    if world.active and config.data.streaming:  # ranks would each need their own share of one stream
        raise KieloError(
            "data.streaming does not run in several processes yet",
            "train it in one process (without --nproc), or load the set (data.streaming: false)",
        )
    model = start_adapter(bundle.model, config.lora, path.lora_forward)
    bundle = replace(bundle, model=model)
    trainable, total = describe_parameters(model)
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    sharded = rank0_loads(world, t.distributed)
    if sharded:  # rank 0's base, LoRA and resumed adapter sent to the others' shards
        from kielo.train import fsdp

        shard_from_rank0(world, model, bundle.device, latest)
    else:
        broadcast_parameters(world, [p for p in model.parameters() if p.requires_grad])  # makes sure of the seeded init
    params = [p for p in model.parameters() if p.requires_grad]
    if world.active:
        # Dropout masks: each rank draws its own (the same stream on every rank would repeat one mask).
        torch.manual_seed(t.seed + 1000003 * world.rank)
    optimizer = build_optimizer(params, t, bundle.device)
    scheduler = build_scheduler(optimizer, t, steps)
    if world.main:
        run.write_config(config)
    step, tokens_seen, history = 0, 0, {}
    guard = DivergenceGuard(causal_lm(model).config.vocab_size, t.on_divergence, objective.loss_spikes)
    # Before a checkpoint's weights are loaded: what the objective computes once comes from the starting weights.
    layouts = {"train": layout, **({"validation": val_layout} if val_layout is not None else {})}
    objective.prepare(model, layouts, bundle.device, out, resumed=latest is not None, from_adapter=bool(config.lora.init_from))
    if latest is not None:
        state = ckpt.load_state(latest)
        if sharded:
            fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
        else:
            ckpt.load_adapter_weights(model, latest)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(_rank_rng(state, world))
        step, tokens_seen, history = state["step"], state["tokens_seen"], state["history"]
        guard.running, guard.skipped, guard.pending = state["guard"]["running"], list(state["guard"]["skipped"]), latest
        if config.data.streaming:
            layout.seek(state["stream"])
        log.info("resumed from %s (step %d of %d)", latest, step, steps)
    trackers = open_trackers(out, to_dict(config), t.report_to, t.mlflow_uri) if world.main else []
    metrics = MetricsLog(out, resume_step=step if latest is not None else None, trackers=trackers) if world.main else None

    # What only this run knows for the model cards (README.md) of its checkpoints and final adapter.
    card_facts = {"template": bundle.template.name, "end_token": bundle.template.end_token, "data": data_report, "steps": steps}

    def save(at: int) -> Path:
        extra = {"tokens_seen": tokens_seen, "history": history, "guard": {"running": guard.running, "skipped": guard.skipped}}
        # Every rank's random streams (dropout), so a resumed distributed run continues bit for bit.
        rngs = gather_objects(world, rng_state())
        if world.active:
            extra["rng_ranks"] = rngs
        if config.data.streaming:
            extra["stream"] = layout.position()

        def side_files(folder: Path) -> None:
            write_side_files(bundle, folder)
            write_card(folder, out, card_facts, location=checkpoints_dir(out) / f"step-{at}", step=at)

        written = None
        # A sharded model's adapter and optimizer state are gathered whole (every rank takes part).
        whole = (fsdp.full_lora_state(model), fsdp.full_optimizer_state(model, optimizer)) if sharded else (None, None)
        if world.main:
            written = ckpt.save_checkpoint(out, at, model, optimizer, scheduler, extra, side_files, *whole)
        written = Path(broadcast_object(world, str(written) if written else None) or checkpoints_dir(out) / f"step-{at}")
        guard.written(written)
        if world.main:
            ckpt.prune_checkpoints(out, t.keep_last, protect=guard.protected())
        return written

    def validate(at: int) -> None:
        if val_layout is None:
            return
        if world.active:
            result = evaluate_loss(model, val_layout, bundle.device, path.loss, world, sharded)
        else:
            result = objective.evaluate(model, val_layout, bundle.device)
        history.setdefault("validation", []).append({"step": at, **result})
        if metrics is not None:
            metrics.write({"split": "validation", "step": at, **result})
        log.info("step %d validation %s", at, objective.describe(result))

    if step == 0:
        validate(0)
    model.train()
    bar = tqdm(total=steps, initial=step, desc="train", unit="step", disable=not (progress and world.main), dynamic_ncols=True)
    loop_start, loop_tokens = time.time(), 0
    while step < steps:
        if step:
            fault_point("between-steps")
        # All ranks stop together: a signal seen by one rank only would leave the others in a collective.
        if any_rank(world, stop_requested() is not None):
            bar.close()
            signal_name = stop_requested() or "SIGTERM"
            if metrics is not None:
                metrics.close()
            return _stopped(
                out, step, steps, signal_name, latest if latest is not None and latest.name == f"step-{step}" else None, save
            )
        if world.active:
            work = gradient_step(model, layout, step, t.gradient_accumulation, bundle.device, path.loss, params, world, sharded)
            loss, step_metrics, real = work.loss, {}, work.real_tokens
        else:
            micro = [layout.batch(step * t.gradient_accumulation + k) for k in range(t.gradient_accumulation)]
            loss, step_metrics = objective.accumulate(model, micro, bundle.device)
            real = sum(b.real_tokens for b in micro)
        norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
        grad_norm = fsdp.grad_norm(norm) if sharded else float(norm)
        injected = fault_point("step")
        if injected == "nan":  # a bad batch: its gradients are not finite
            loss, grad_norm = float("nan"), float("nan")
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        healthy = guard.check(step + 1, loss, grad_norm, t.learning_rate)
        if healthy:
            optimizer.step()
            if injected == "poison":  # a bad update, as a huge learning rate makes one: the next loss shows it
                with torch.no_grad():
                    params[0].fill_(float("nan"))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += real
        loop_tokens += real
        history.setdefault("train_first", loss)
        history["train_last"] = loss
        if step_metrics:
            history["train_metrics_last"] = step_metrics
        tps = loop_tokens / max(time.time() - loop_start, 1e-9)
        if metrics is not None and (step % t.log_every == 0 or step == steps):
            metrics.write(
                {
                    "split": "train",
                    "step": step,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": tokens_seen,
                    "tokens_per_s": tps,
                    **step_metrics,
                    **({} if healthy else {"skipped": True}),
                }
            )
        bar.set_postfix(lr=f"{scheduler.get_last_lr()[0]:.2e}", loss=f"{loss:.4f}", tok_s=f"{tps:.0f}")
        bar.update(1)
        if t.eval_every and step % t.eval_every == 0 and step < steps:
            validate(step)
        if t.save_every and step % t.save_every == 0 and step < steps:
            latest = save(step)
    bar.close()
    validate(steps)
    final_state = fsdp.full_lora_state(model) if sharded else None
    if world.main:
        run.write_final(
            bundle,
            model,
            midway=lambda f: fault_point("final-save", f),
            card=lambda f: write_card(f, out, card_facts, location=out),
            adapter_state=final_state,
        )
    summary = {
        "steps": steps,
        "epochs": steps * t.gradient_accumulation / layout.per_epoch if layout.per_epoch else None,
        "train_examples": None if config.data.streaming else len(train_items),
        **({"stream_position": layout.position()} if config.data.streaming else {}),
        "validation_examples": len(val_items),
        "tokens_seen": tokens_seen,
        "wall_time_s": round(time.time() - started, 2),
        "peak_memory_bytes": peak_memory_bytes(bundle.device),
        "estimated_peak_memory_bytes": memory_plan.estimate.total if memory_plan else None,
        "memory_plan": memory_plan.describe() if memory_plan else None,
        "device": str(bundle.device),
        "processes": world.size,
        **({"distributed": t.distributed} if world.active else {}),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_loss_first": history.get("train_first"),
        "train_loss_last": history.get("train_last"),
        "validation_loss_start": history["validation"][0]["loss"] if history.get("validation") else None,
        "validation_loss_end": history["validation"][-1]["loss"] if history.get("validation") else None,
        "objective": t.objective,
        **preference_summary(t.objective, history),
        "template": bundle.template.name,
        "end_token": bundle.template.end_token,
        "data": data_report,
        "skipped_steps": guard.skipped,
    }
    if not world.main:
        return summary
    fault_point("summary")
    run.write_summary(summary)
    metrics.close(final_numbers(summary))
    log.info("adapter written to %s", out)
    return summary


def _rank_rng(state: dict, world: World) -> dict:
    """This rank's random streams from a checkpoint: its own when the run had as many ranks, else rank 0's
    (a run resumed on another number of processes continues with the same data and gradients, but dropout
    draws other masks)."""
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == world.size:
        return ranks[world.rank]
    if world.active or ranks is not None:
        log.warning("the checkpoint was written by a run of another number of processes: dropout masks will differ")
    return state["rng"]


def _stopped(out: Path, step: int, steps: int, signal_name: str, checkpoint: Path | None, save) -> dict:
    """End a run asked to stop (SIGTERM, Ctrl-C) at a step boundary: checkpoint it, say how to go on."""
    if step and checkpoint is None:
        checkpoint = save(step)
    if checkpoint is None:
        log.warning("%s before the first step: nothing trained yet; start the run again (without --resume)", signal_name)
    else:
        log.warning(
            "%s: stopped at step %d of %d with checkpoint %s; continue with: kielo train ... --output_dir %s --resume",
            signal_name,
            step,
            steps,
            checkpoint,
            out,
        )
    return {"stopped": signal_name, "step": step, "steps": steps, "checkpoint": str(checkpoint) if checkpoint else None}
