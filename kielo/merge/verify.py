"""Prove a merge: the merged model's logits match base + adapter, and its greedy answers agree.

The reference is the unquantized base with the PEFT adapter attached, unmerged, in the same dtype (with
``--dtype auto``, in fp32, the base's full precision, so the check covers the base's own rounding too): the
function the merged weights ``W + scaling * B @ A`` must reproduce. On each sample prompt the reference
answers greedily; the prompt plus that answer is then run through both models and every logit of every
position is compared. A merge passes when the largest absolute logit difference is within the dtype's
tolerance (below). Greedy choices are compared at every answer position: where the two models pick
different tokens, the reference's own margin between them is reported. With logits within the tolerance a
different pick can only be a near-tie (margin at most twice the tolerance); a larger margin fails the check.
Free greedy generation with the merged model is reported too (identical answers out of how many), and the
KL divergence of the next-token distributions.

This check bounds what storing the merged weights does to the model's output. Wrong merges are caught
sharper still, weight by weight, in :func:`kielo.merge.merge.merge_adapter`: each merged weight must
equal ``W + update`` with the update computed independently, within two rounding steps.

Tolerances, in logits, by the dtype the merged weights are saved in (the models compute in that dtype on a
GPU, in fp32 on a CPU; see :func:`kielo.merge.dequantize.compute_dtype_for`). Measured on Gemma 3 270M,
whose logits span ~60 between best and worst token, with a 2-step adapter that moves logits by up to 5.5:

- fp32: 0.01. Merged and unmerged differ only in float32 summation order (measured: 1e-4).
- bf16: 2.0. Each merged weight ``W + update`` is rounded once to bf16's 8-bit mantissa, so the part of a
  small update below the weight's rounding step is lost or doubled, while the reference keeps the adapter
  in fp32. Measured: max 0.94 computing in fp32, 1.1 computing in bf16 (mean 0.08-0.09, largest KL 0.03).
- fp16: 0.5. Three more mantissa bits than bf16.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import torch

from kielo.errors import KieloError
from kielo.merge.options import TOLERANCES
from kielo.train.loss import causal_lm, head_logits

log = logging.getLogger(__name__)

NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
HEAD_ROWS = 64  # positions sent through the output head at once (bounds the rows x vocab logits tensor)


def tolerance_for(dtype: torch.dtype) -> float:
    """The default logit tolerance for merged weights saved in ``dtype``."""
    return TOLERANCES[NAMES[dtype]]


@dataclass
class Reference:
    """What the models are compared on: token sequences (prompt + reference answer) and the reference's logits."""

    sequences: list[list[int]]
    prompt_lengths: list[int]
    logits: list[torch.Tensor] = field(default_factory=list)  # [len, vocab] per sequence, on the CPU
    generate_kwargs: dict = field(default_factory=dict)

    def answer(self, i: int) -> list[int]:
        return self.sequences[i][self.prompt_lengths[i] :]


@torch.no_grad()
def sequence_logits(model, ids: list[int], device: torch.device) -> torch.Tensor:
    """All logits of one sequence, on the CPU, in the output head's dtype (lossless for that head)."""
    lm = causal_lm(model)
    out = lm.base_model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    hidden = (out[0] if isinstance(out, tuple) else out.last_hidden_state)[0]
    head_dtype = lm.get_output_embeddings().weight.dtype
    if not head_dtype.is_floating_point:
        head_dtype = torch.float32
    return torch.cat([head_logits(lm, hidden[i : i + HEAD_ROWS]).to(head_dtype).cpu() for i in range(0, hidden.shape[0], HEAD_ROWS)])


@torch.no_grad()
def greedy(model, prompt: list[int], generate_kwargs: dict, device: torch.device) -> list[int]:
    """The model's greedy continuation of ``prompt`` (end token included when reached)."""
    ids = torch.tensor([prompt], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **generate_kwargs)
    return out[0, len(prompt) :].tolist()


def capture_reference(model, prompts: list[list[int]], generate_kwargs: dict, device: torch.device) -> Reference:
    """Greedy answers of the reference model and its logits over prompt + answer."""
    kwargs = {**generate_kwargs, "do_sample": False}
    ref = Reference([], [], [], kwargs)
    for p in prompts:
        seq = list(p) + greedy(model, p, kwargs, device)
        ref.sequences.append(seq)
        ref.prompt_lengths.append(len(p))
        ref.logits.append(sequence_logits(model, seq, device))
    return ref


def compare(
    model, reference: Reference, tolerance: float, device: torch.device, generate: bool = True, keep_logits: bool = False
) -> tuple[dict, list[torch.Tensor] | None]:
    """Compare ``model`` with the reference; returns the result (``passed`` included) and, if asked, its logits."""
    max_diff, diff_sum, n_logits, kl_max, kl_sum = 0.0, 0.0, 0, 0.0, 0.0
    positions = disagreements = near_ties = identical = 0
    tie_margin = 0.0
    worst: dict | None = None
    kept = [] if keep_logits else None
    for i, (seq, ref_logits) in enumerate(zip(reference.sequences, reference.logits, strict=True)):
        got = sequence_logits(model, seq, device)
        d = (got.float() - ref_logits.float()).abs()
        # NaN or inf (a dtype's range overflowed) must fail, not vanish in max()'s comparisons.
        peak = float(d.max())
        max_diff = max(max_diff, peak if math.isfinite(peak) else math.inf)
        diff_sum += float(d.sum())
        n_logits += d.numel()
        del d
        # What the difference does to the next-token distribution: KL(reference || model) per position.
        ref_lp, got_lp = torch.log_softmax(ref_logits.float(), -1), torch.log_softmax(got.float(), -1)
        kl = (ref_lp.exp() * (ref_lp - got_lp)).sum(-1)
        kl_max, kl_sum = max(kl_max, float(kl.max())), kl_sum + float(kl.sum())
        del ref_lp, got_lp
        # Position j's logits choose token j + 1: the answer's tokens are chosen at P-1 .. len-2.
        start = reference.prompt_lengths[i] - 1
        ref_ans, got_ans = ref_logits[start:-1].float(), got[start:-1].float()
        ref_pick, got_pick = ref_ans.argmax(-1), got_ans.argmax(-1)
        positions += len(ref_pick)
        for j in (ref_pick != got_pick).nonzero().flatten().tolist():
            margin = float(ref_ans[j, ref_pick[j]] - ref_ans[j, got_pick[j]])
            if margin > 2 * tolerance:
                disagreements += 1
                if worst is None or margin > worst["margin"]:
                    worst = {"sequence": i, "position": start + j, "margin": margin}
            else:
                near_ties += 1
                tie_margin = max(tie_margin, margin)
        if generate:
            identical += greedy(model, seq[: reference.prompt_lengths[i]], reference.generate_kwargs, device) == reference.answer(i)
        if kept is not None:
            kept.append(got)
    result = {
        "max_abs_logit_diff": max_diff,
        "mean_abs_logit_diff": diff_sum / max(n_logits, 1),
        "max_kl": kl_max,
        "mean_kl": kl_sum / max(sum(len(s) for s in reference.sequences), 1),
        "tolerance": tolerance,
        "sequences": len(reference.sequences),
        "tokens": sum(len(s) for s in reference.sequences),
        "greedy": {
            "answer_positions": positions,
            "disagreements": disagreements,
            "near_ties": near_ties,
            "largest_near_tie_margin": tie_margin,
            **({"identical_answers": identical} if generate else {}),
            **({"worst": worst} if worst else {}),
        },
        "passed": max_diff <= tolerance and disagreements == 0,
    }
    return result, kept


def check(result: dict, what: str, fix: str) -> None:
    """Raise a clear error when a comparison failed."""
    if result["passed"]:
        return
    g = result["greedy"]
    parts = [
        f"largest logit difference {result['max_abs_logit_diff']:.4g} (tolerance {result['tolerance']:g})",
        f"{g['disagreements']} of {g['answer_positions']} answer tokens chosen differently",
    ]
    for name, sub in result.items():  # sub-checks (tokenizer, llama.cpp) of a GGUF comparison
        if isinstance(sub, dict) and sub.get("passed") is False:
            parts.append(f"{name} check failed: {json.dumps({k: v for k, v in sub.items() if k != 'passed'})}")
    raise KieloError(f"{what} failed: {'; '.join(parts)}", fix)
