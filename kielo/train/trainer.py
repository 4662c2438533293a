"""`kielo train`: a LoRA adapter on a (quantized) base model from instruction data.

kielo runs its own loop instead of transformers' Trainer: the loss is computed only at trained positions
(see loss.py), packing needs its own decoder inputs (packing.py), and gradient accumulation must
normalize by the trained tokens of the whole accumulated batch. Each is a few lines here and a fight
with a general trainer's hooks.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from kielo.config.load import CONFIG_FILE, load_config, save_config
from kielo.config.schema import Config
from kielo.data.batches import BatchPlan, eval_batch_size
from kielo.data.encode import Encoded, EncodeStats
from kielo.data.records import load_examples
from kielo.errors import KieloError
from kielo.model.bundle import Bundle, load_bundle
from kielo.model.precision import resolved_precision
from kielo.plan.planner import plan_training
from kielo.train import checkpoint as ckpt
from kielo.train.optim import build_optimizer, build_scheduler
from kielo.train.packing import require_packing_support
from kielo.train.step import accumulate_gradients, evaluate_loss, training_path

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the examples (at least one) with a seeded shuffle."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        raise KieloError("data.validation_split leaves no training examples", "use a smaller fraction or more data")
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


def read_data(config: Config) -> tuple[list, list]:
    """Read and validate the training and validation rows (and split off validation_split): no model needed,
    so bad data fails before a model is loaded."""
    d = config.data
    if not d.train:
        raise KieloError("no training data: data.train is not set", "set data.train in the config or pass --data.train FILE")
    train_ex = load_examples(d.train, d.system_prompt)
    val_ex = load_examples(d.validation, d.system_prompt) if d.validation else []
    if d.validation_split:
        train_ex, val_ex = split_validation(train_ex, d.validation_split, config.training.seed)
    return train_ex, val_ex


def prepare_data(bundle: Bundle, examples: tuple[list, list] | None = None) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode training and validation data (read by :func:`read_data` unless given); report what was cut or
    dropped."""
    return encode_data(bundle.encoder, bundle.config, examples if examples is not None else read_data(bundle.config))


def encode_data(encoder, config: Config, examples: tuple[list, list]) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode read training and validation rows with ``encoder`` (no model needed); warn about what was cut
    or dropped; no training example left is an error."""
    d = config.data
    train_ex, val_ex = examples
    train, train_stats = encoder.encode_all(train_ex)
    val, val_stats = encoder.encode_all(val_ex) if val_ex else ([], EncodeStats())
    for name, st in (("train", train_stats), ("validation", val_stats)):
        if st.truncated or st.dropped_overlong or st.dropped_no_target:
            log.warning(
                "%s: %d of %d examples longer than data.max_length=%d: %d truncated, %d dropped (overlong), "
                "%d dropped (answer cut entirely); %d tokens lost",
                name,
                st.truncated + st.dropped_overlong + st.dropped_no_target,
                st.total,
                d.max_length,
                st.truncated,
                st.dropped_overlong,
                st.dropped_no_target,
                st.tokens_lost,
            )
    if not train:
        raise KieloError(f"no training example fits data.max_length={d.max_length}", "raise data.max_length or use shorter examples")
    report = {"train": asdict(train_stats), "validation": asdict(val_stats)}
    for r in report.values():
        r.pop("dropped_sources")
    return train, val, report


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def write_side_files(bundle: Bundle, folder: Path) -> None:
    """Tokenizer with the training template, generation config naming the end token, resolved config."""
    from transformers import GenerationConfig

    tok = bundle.tokenizer
    tok.chat_template = bundle.template.chat_template
    tok.save_pretrained(folder)
    eos = [bundle.template.end_token_id]
    if tok.eos_token_id is not None and tok.eos_token_id not in eos:
        eos.append(tok.eos_token_id)
    g = bundle.config.generation
    GenerationConfig(
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        max_new_tokens=g.max_new_tokens,
        do_sample=g.temperature > 0,
        **({"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k} if g.temperature > 0 else {}),
        repetition_penalty=g.repetition_penalty,
    ).save_pretrained(folder)
    save_config(bundle.config, folder)


def _guard_output_dir(out: Path, resume: bool) -> None:
    """Never overwrite a finished or running run by accident."""
    if resume:
        return
    if (out / SUMMARY_FILE).exists() or ckpt.list_checkpoints(out) or (out / "adapter_model.safetensors").exists():
        raise KieloError(
            f"{out} already holds a training run",
            "pass --resume to continue it, or choose another --output_dir",
        )


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed)."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / METRICS_FILE
        self.fh = self.path.open("a" if resume else "w", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            log.debug("tensorboard not installed; metrics go to %s only", self.path)

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record.get('split', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def total_steps(config: Config, per_epoch: int) -> int:
    t = config.training
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(t.epochs * per_epoch / t.gradient_accumulation))


def train(config: Config, resume: bool = False, progress: bool = True) -> dict:
    """Train a LoRA adapter as ``config`` says and write it, with everything around it, to ``output_dir``.

    Returns the summary (also written to ``summary.json``).
    """
    from tqdm.auto import tqdm

    from kielo.model.adapter import add_lora
    from kielo.model.load import describe_parameters

    t = config.training
    out = Path(config.output_dir)
    _guard_output_dir(out, resume)
    latest = ckpt.list_checkpoints(out)[-1] if resume and ckpt.list_checkpoints(out) else None
    if resume and latest is None:
        raise KieloError(f"--resume: {out} has no checkpoint to resume from", "start without --resume")
    started = time.time()
    seed_everything(t.seed)
    examples = read_data(config)
    bundle = load_bundle(config, for_training=True)
    if config.data.packing:
        require_packing_support(bundle.model)
    train_items, val_items, data_report = prepare_data(bundle, examples)
    saved = load_config(out / CONFIG_FILE) if latest is not None and (out / CONFIG_FILE).is_file() else None
    # The bundle's config has the device, dtypes and kernels resolved; the plan adds its picks.
    config, memory_plan = plan_training(bundle.config, bundle.model, train_items, bundle.device, saved)
    bundle = replace(bundle, config=config)
    t = config.training
    pad_id = bundle.tokenizer.pad_token_id
    plan = BatchPlan(train_items, t.micro_batch_size, pad_id, t.seed, config.data.packing, config.data.max_length)
    # Evaluation needs no gradients, so it affords bigger batches; sorting by length keeps padding small.
    eval_batch = eval_batch_size(config)
    val_sorted = sorted(val_items, key=lambda it: len(it.input_ids))
    val_plan = BatchPlan(val_sorted, eval_batch, pad_id, t.seed, False, shuffle=False) if val_items else None
    steps = total_steps(config, plan.per_epoch)
    path = training_path(resolved_precision(config))
    model = add_lora(bundle.model, config.lora, path.lora_forward)
    bundle = replace(bundle, model=model)
    trainable, total = describe_parameters(model)
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t, bundle.device)
    scheduler = build_scheduler(optimizer, t, steps)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out)
    step, tokens_seen, history = 0, 0, {}
    if latest is not None:
        state = ckpt.load_state(latest)
        ckpt.load_adapter_weights(model, latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step, tokens_seen, history = state["step"], state["tokens_seen"], state["history"]
        log.info("resumed from %s (step %d of %d)", latest, step, steps)
    metrics = MetricsLog(out, resume=latest is not None)

    def validate(at: int) -> None:
        if val_plan is None:
            return
        result = evaluate_loss(model, val_plan, bundle.device, path.loss)
        history.setdefault("validation", []).append({"step": at, **result})
        metrics.write({"split": "validation", "step": at, **result})
        log.info("step %d validation loss %.4f (perplexity %.2f)", at, result["loss"], result["perplexity"])

    if step == 0:
        validate(0)
    model.train()
    bar = tqdm(total=steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    loop_start, loop_tokens = time.time(), 0
    while step < steps:
        micro = [plan.batch(step * t.gradient_accumulation + k) for k in range(t.gradient_accumulation)]
        loss = accumulate_gradients(model, micro, bundle.device, path.loss)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm or float("inf")))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        real = sum(b.real_tokens for b in micro)
        tokens_seen += real
        loop_tokens += real
        history.setdefault("train_first", loss)
        history["train_last"] = loss
        tps = loop_tokens / max(time.time() - loop_start, 1e-9)
        if step % t.log_every == 0 or step == steps:
            metrics.write(
                {
                    "split": "train",
                    "step": step,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens": tokens_seen,
                    "tokens_per_s": tps,
                }
            )
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:.0f}")
        bar.update(1)
        if t.eval_every and step % t.eval_every == 0 and step < steps:
            validate(step)
        if t.save_every and step % t.save_every == 0 and step < steps:
            ckpt.save_checkpoint(
                out,
                step,
                model,
                optimizer,
                scheduler,
                {"tokens_seen": tokens_seen, "history": history},
                lambda f: write_side_files(bundle, f),
            )
            ckpt.prune_checkpoints(out, t.keep_last)
    bar.close()
    validate(steps)
    _write_final(bundle, model, out)
    summary = {
        "steps": steps,
        "epochs": steps * t.gradient_accumulation / plan.per_epoch,
        "train_examples": len(train_items),
        "validation_examples": len(val_items),
        "tokens_seen": tokens_seen,
        "wall_time_s": round(time.time() - started, 2),
        "peak_memory_bytes": peak_memory_bytes(bundle.device),
        "estimated_peak_memory_bytes": memory_plan.estimate.total if memory_plan else None,
        "memory_plan": memory_plan.describe() if memory_plan else None,
        "device": str(bundle.device),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_loss_first": history.get("train_first"),
        "train_loss_last": history.get("train_last"),
        "validation_loss_start": history["validation"][0]["loss"] if history.get("validation") else None,
        "validation_loss_end": history["validation"][-1]["loss"] if history.get("validation") else None,
        "template": bundle.template.name,
        "end_token": bundle.template.end_token,
        "data": data_report,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    metrics.close()
    log.info("adapter written to %s", out)
    return summary


def _write_final(bundle: Bundle, model, out: Path) -> None:
    """Write adapter + side files through a temporary folder, then move them in (no half-written adapter)."""
    tmp = out / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_side_files(bundle, tmp)
    for f in tmp.iterdir():
        target = out / f.name
        if target.is_dir():
            shutil.rmtree(target)
        f.replace(target)
    tmp.rmdir()
