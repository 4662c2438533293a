"""The bench's DPO case (data ``p``): preference pairs in random tokens, and one optimizer step of each stack on them.

- **stock** = what TRL's ``DPOTrainer`` (1.15/1.16) does with a peft + bitsandbytes model and no ``ref_model``: its
  collator (``DataCollatorForPreference``: the chosen rows, then the rejected rows, right-padded), TRL's own fused
  LM head (``add_fused_lm_head``: per-token log-probabilities of the trained positions in tiles, never the whole
  logits), one forward of the policy and one of the reference with the adapter disabled under ``no_grad``, its
  sigmoid loss (the mean over the micro-batch's pairs) and the Trainer's division by the accumulation steps. The
  forwards run under bf16 autocast on CUDA, as ``DPOConfig``'s default ``bf16=True`` makes Accelerate wrap the
  model. Left out: its logging metrics (a few reductions of per-row numbers) and the switch of gradient
  checkpointing off around the reference forward (under ``no_grad`` checkpointing keeps nothing either way).
- **kielo** = the objective ``kielo train`` builds for ``training.objective: dpo`` (``build_objective``; reference =
  the adapter switched off) over kielo's own pair batches.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from kielo.errors import KieloError

BETA = 0.1  # DPO's beta: TRL's DPOConfig default and kielo's training.beta default
# The per-token fields DPOTrainer asks its fused head for (its logging metrics use the ones beyond log_probs).
TRL_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def pair_examples(steps: int, per_step: int, max_len: int, vocab: int, seed: int, mean_tokens: int = 300) -> list[list]:
    """Data p: per step, ``per_step`` pairs whose prompt, chosen and rejected answers each have log-normal lengths
    of mean ~``mean_tokens`` (prompt + answer clipped to ``max_len``), random tokens; the answers differ."""
    from kielo.data.encode import IGNORE, Encoded
    from kielo.data.pairs import Pair

    rng = random.Random(seed)

    def length() -> int:
        # sigma 0.3: lengths mostly within 0.6-1.6x the mean (mu = log(mean) - sigma^2 / 2)
        return max(4, int(rng.lognormvariate(math.log(mean_tokens) - 0.045, 0.3)))

    out, index = [], 0
    for _ in range(steps):
        step = []
        for _ in range(per_step):
            prompt = [rng.randrange(vocab - 1) for _ in range(min(length(), max_len // 2))]
            sides = []
            for _ in ("chosen", "rejected"):
                answer = [rng.randrange(vocab - 1) for _ in range(min(length(), max_len - len(prompt)))]
                ids = prompt + answer
                sides.append(Encoded(ids, [IGNORE] * len(prompt) + answer, len(prompt), len(answer), index=index))
            step.append(Pair(sides[0], sides[1], index))
            index += 1
        out.append(step)
    return out


def trl_collate(pairs: list, pad_id: int):
    """A micro-batch of pairs as TRL's ``DataCollatorForPreference`` lays it out (labels = the input ids where its
    ``completion_mask`` is 1, as ``DPOTrainer`` derives them), as a :class:`~kielo.data.pairs.PairBatch`."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from kielo.data.batches import trained_count
    from kielo.data.pairs import PairBatch

    examples = [
        {
            "prompt_ids": p.chosen.input_ids[: p.chosen.prompt_tokens],
            "chosen_ids": p.chosen.input_ids[p.chosen.prompt_tokens :],
            "rejected_ids": p.rejected.input_ids[p.rejected.prompt_tokens :],
        }
        for p in pairs
    ]
    out = DataCollatorForPreference(pad_token_id=pad_id)(examples)
    labels = out["input_ids"].masked_fill(out["completion_mask"] == 0, -100)
    return PairBatch(
        out["input_ids"],
        labels,
        out["attention_mask"],
        None,
        int(out["attention_mask"].sum()),
        sum(trained_count(row) for row in labels.tolist()),
        [p.index for p in pairs],
        pairs=len(pairs),
    )


def pair_batches(pairs: list, path, mbs: int, pad_id: int) -> list:
    """One optimizer step's pairs in micro-batches of ``mbs`` pairs: TRL's collation for stock (``path`` None),
    kielo's (``collate_pairs``, what ``kielo train`` feeds its objective on this training path: one packed row a
    micro-batch where packed rows attend through varlen attention) for kielo."""
    from kielo.data.pairs import collate_pairs

    groups = [pairs[i : i + mbs] for i in range(0, len(pairs), mbs)]
    if path is None:
        _trl()
        return [trl_collate(g, pad_id) for g in groups]
    return [collate_pairs(g, pad_id, packed=path.precision.varlen) for g in groups]


def _trl():
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError as e:
        raise KieloError(
            f"the stock DPO step is TRL's DPOTrainer computation and needs TRL ({e})",
            "install trl (on the GPU machine: WHL='.whl .whl2' bash bench/run_qlora_bench.sh ...)",
        ) from None
    return add_fused_lm_head


def stock_dpo_step(model) -> callable:
    """``(model, micro, device) -> loss``: TRL's DPOTrainer step on the peft model (see the module's docstring).
    TRL's fused head is put on the underlying model once, as DPOTrainer does at construction; the model's plain
    forward (the SFT cases) is unchanged by it."""
    base = model.get_base_model()
    if not getattr(base, "_kielo_bench_trl_head", False):
        _trl()(base, outputs=TRL_HEAD_OUTPUTS)
        base._kielo_bench_trl_head = True

    def step(model, micro: list, device: torch.device) -> float:
        total = 0.0
        for b in micro:
            b = b.to(device)
            inputs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "use_cache": False}
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
            with amp:
                logps = model(**inputs, labels=b.labels, fused_lm_head=True).log_probs.sum(dim=1)
            with torch.no_grad(), model.disable_adapter(), amp:
                ref = model(**inputs, labels=b.labels, fused_lm_head=True).log_probs.sum(dim=1)
            chosen, rejected = logps.chunk(2)
            ref_chosen, ref_rejected = ref.chunk(2)
            loss = -F.logsigmoid(BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
            # transformers' Trainer: a loss that takes no num_items_in_batch is divided by the accumulation steps.
            (loss / len(micro)).backward()
            total += float(loss.detach()) / len(micro)
        return total

    return step


def kielo_dpo_step(loaded) -> callable:
    """``(model, micro, device) -> loss``: the objective ``kielo train`` builds for DPO on this training path."""
    from dataclasses import replace

    from kielo.bench.models import kielo_config
    from kielo.train.preference import build_objective

    config = kielo_config()
    config = replace(config, training=replace(config.training, objective="dpo", beta=BETA, reference="adapter_off"))
    objective = build_objective(config, loaded.path)

    def step(model, micro: list, device: torch.device) -> float:
        return objective.accumulate(model, micro, device)[0]

    return step
