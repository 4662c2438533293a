"""Preference objectives (DPO, ORPO, SimPO) as a training step: the same seams as SFT, another loss.

A micro-batch of B pairs is one padded batch of 2B rows (chosen rows, then rejected), so both sides go through
one forward. The decoder runs once and, as for SFT (``kielo.train.loss``), only hidden states at trained
positions (the final answer and its end token) go through the output head; their token log-probabilities are
summed per row.

- **DPO** (Rafailov et al. 2023): ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))`` per pair, with summed answer
  log-probabilities of the policy (p) and the reference (r). The reference is the policy with its adapter
  switched off (peft's ``disable_adapter``: the frozen base, no second copy of it), or log-probabilities computed
  once before the first step and saved in the run folder (``training.reference: cached``). When training starts
  from an adapter (``lora.init_from``) the cache is what makes that adapter the reference exactly: it is
  computed before any update, from the very weights the policy starts with, in eval mode (no LoRA dropout), so
  no second adapter has to be kept in sync with kielo's LoRA forward.
- **ORPO** (Hong et al. 2024), as TRL's ORPOTrainer computes it: the chosen answer's mean token loss minus
  ``beta`` times the mean over pairs of ``log sigmoid(log odds(chosen) - log odds(rejected))``, where the odds
  use each answer's mean token log-probability. No reference.
- **SimPO** (Meng et al. 2024), as TRL's CPOTrainer computes it with ``loss_type="simpo"`` and ``cpo_alpha=0``:
  ``-log sigmoid(beta * (mc - mr) - gamma)`` per pair, ``mc``/``mr`` each answer's mean token log-probability.
  The mean makes the reward length-normalised (a long answer is not preferred for its length), and with no
  reference there is no reference forward: a step costs what an SFT step on both answers costs.

Gradient accumulation divides the pair terms by the pairs of the whole accumulated batch and ORPO's answer loss
by the chosen tokens of the whole batch, so the step equals one big batch.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kielo.data.pairs import PairBatch, PairLayout
from kielo.model.adapter import causal_lm
from kielo.plan.memory import HEAD_CHUNK
from kielo.train.faults import fault_point
from kielo.train.loss import head_logits, trained_hidden
from kielo.train.step import SftObjective, TrainingPath

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.pt"
# Per-pair numbers every preference step reports (means over the pairs of the step or of the validation set).
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected")


def _token_logps(lm, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head_logits(lm, hidden), targets, reduction="none")


def sequence_logps(model, batch, recompute_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's trained tokens, and their number, from one forward: (rows,) each.

    The head runs in chunks of :data:`HEAD_CHUNK` rows (the matmul in the head's dtype, log-softmax in fp32). Each
    chunk's fp32 logits are kept for the backward unless ``recompute_head``: then a chunk is recomputed from its
    hidden states in the backward (one more head matmul), so at most one chunk's logits exist at a time instead of
    those of every trained token of the batch (Llama's 128k vocabulary: 0.5 MB per token)."""
    lm = causal_lm(model)
    h, y, mask = trained_hidden(model, batch)
    sides = 2 * batch.pairs if batch.sides is not None else mask.shape[0]
    recompute = recompute_head and torch.is_grad_enabled()
    chunks = []
    for i in range(0, h.shape[0], HEAD_CHUNK):
        hc, yc = h[i : i + HEAD_CHUNK], y[i : i + HEAD_CHUNK]
        chunks.append(checkpoint(_token_logps, lm, hc, yc, use_reentrant=False) if recompute else _token_logps(lm, hc, yc))
    token = torch.cat(chunks) if chunks else h.new_zeros(0, dtype=torch.float32)
    # hidden[mask] and mask.nonzero() both walk the mask row by row, so each token's row (padded: its side) is
    # known; a packed row says which side each position holds.
    side = mask.nonzero(as_tuple=True)[0] if batch.sides is None else batch.sides[:, 1:][mask]
    sums = torch.zeros(sides, dtype=token.dtype, device=token.device).index_add(0, side, token)
    return sums, torch.bincount(side, minlength=sides)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass(frozen=True)
class PreferenceObjective:
    """A DPO, ORPO or SimPO step over :class:`~kielo.data.pairs.PairBatch` micro-batches."""

    kind: str  # "dpo", "orpo" or "simpo"
    beta: float
    reference: str = "adapter_off"  # dpo only: "adapter_off" or "cached"
    # Recompute each head chunk in the backward instead of keeping its fp32 logits (the Liger path's memory).
    recompute_head: bool = False
    # A few pairs' -log sigmoid(beta * margin) jumps on one misranked pair: not a divergence sign (kielo.train.guard).
    loss_spikes: bool = False
    gamma: float = 0.5  # simpo only: the target margin (training.simpo_gamma)

    def reference_logps(self, model, batch: PairBatch) -> torch.Tensor:
        """(2B,) reference log-probabilities: cached ones, or the policy's with its adapter off."""
        if batch.reference is not None:
            return torch.cat([batch.reference[:, 0], batch.reference[:, 1]]).to(torch.float32)
        if self.reference == "cached":
            raise RuntimeError("training.reference is cached but the batch carries no reference log-probabilities")
        with torch.no_grad(), model.disable_adapter():
            return sequence_logps(model, batch)[0].detach()

    def terms(self, model, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of the per-pair loss terms, ORPO's summed chosen-token loss (0 otherwise), per-pair metrics)."""
        n = batch.pairs
        ref = self.reference_logps(model, batch) if self.kind == "dpo" else None
        logps, counts = sequence_logps(model, batch, self.recompute_head)
        pc, pr = logps[:n], logps[n:]
        if self.kind == "dpo":
            chosen_ratio, rejected_ratio = pc - ref[:n], pr - ref[n:]
            pair = -F.logsigmoid(self.beta * (chosen_ratio - rejected_ratio))
            rc, rr = self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()
            nll = pc.new_zeros(())
            metrics = {"logps/chosen": pc.detach(), "logps/rejected": pr.detach()}
        else:  # orpo and simpo score each answer by its mean token log-probability
            mc, mr = pc / counts[:n].clamp(min=1), pr / counts[n:].clamp(min=1)
            rc, rr = self.beta * mc.detach(), self.beta * mr.detach()
            metrics = {"logps/chosen": mc.detach(), "logps/rejected": mr.detach()}
            if self.kind == "simpo":
                pair = -F.logsigmoid(self.beta * (mc - mr) - self.gamma)
                nll = pc.new_zeros(())
            else:
                log_odds = (mc - mr) - (_log1mexp(mc) - _log1mexp(mr))
                pair = -self.beta * F.logsigmoid(log_odds)
                nll = -pc.sum()
                metrics["log_odds_ratio"] = log_odds.detach()
        metrics |= {"rewards/chosen": rc, "rewards/rejected": rr, "rewards/margin": rc - rr, "rewards/accuracy": (rc > rr).float()}
        return pair.sum(), nll, metrics

    def accumulate(self, model, micro: list[PairBatch], device: torch.device) -> tuple[float, dict]:
        """Backward over one optimizer step's micro-batches; returns the step's loss and its pair metrics."""
        n_pairs = sum(b.pairs for b in micro)
        n_chosen = max(1, sum(b.chosen_trained_tokens() for b in micro))
        total, sums = 0.0, {}
        for b in micro:
            pair, nll, metrics = self.terms(model, b.to(device))
            loss = pair / n_pairs + nll / n_chosen
            loss.backward()
            total += float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            if self.kind == "orpo":
                sums["nll_loss"] = sums.get("nll_loss", 0.0) + float(nll.detach()) / n_chosen * n_pairs
        return total, {k: v / n_pairs for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, model, layout: PairLayout, device: torch.device) -> dict:
        """The loss and pair metrics over every pair of ``layout`` (one batch with all of them, in effect)."""
        was_training = model.training
        model.eval()
        pairs, chosen_tokens, pair_sum, nll_sum, sums = 0, 0, 0.0, 0.0, {}
        for i in range(layout.per_epoch):
            b = layout.batch(i)
            pair, nll, metrics = self.terms(model, b.to(device))
            pairs += b.pairs
            chosen_tokens += b.chosen_trained_tokens()
            pair_sum += float(pair)
            nll_sum += float(nll)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            if i == 0:
                fault_point("evaluate")
        if was_training:
            model.train()
        result = {
            "loss": pair_sum / max(pairs, 1) + nll_sum / max(chosen_tokens, 1),
            **{k: v / max(pairs, 1) for k, v in sums.items()},
        }
        if self.kind == "orpo":
            result["nll_loss"] = nll_sum / max(chosen_tokens, 1)
        return {**result, "pairs": pairs}

    def describe(self, result: dict) -> str:
        acc, margin = result["rewards/accuracy"], result["rewards/margin"]
        return f"loss {result['loss']:.4f}, preference accuracy {acc:.3f}, reward margin {margin:.4f}"

    def prepare(
        self, model, layouts: dict[str, PairLayout], device: torch.device, out: Path, resumed: bool, from_adapter: bool
    ) -> None:
        """Give every layout its cached reference log-probabilities (DPO with ``reference: cached``): read from the
        run folder on resume, else computed now, before any update, and saved there. Call before a checkpoint's
        weights are loaded, so a resumed run computes them from the same starting weights."""
        if self.kind != "dpo" or self.reference != "cached":
            return
        path = Path(out) / REFERENCE_FILE
        if resumed and path.is_file():
            saved = torch.load(path, weights_only=True)
            for name, layout in layouts.items():
                layout.reference = saved[name]
            log.info("reference log-probabilities read from %s", path)
            return
        cached = {name: reference_table(model, layout, device, adapter_off=not from_adapter) for name, layout in layouts.items()}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(cached, tmp)
        os.replace(tmp, path)
        for name, layout in layouts.items():
            layout.reference = cached[name]
        log.info("reference log-probabilities of %s computed once and saved to %s", " and ".join(layouts), path)


@torch.no_grad()
def reference_table(model, layout: PairLayout, device: torch.device, adapter_off: bool) -> torch.Tensor:
    """(pairs, 2) log-probabilities (chosen, rejected) of every pair of ``layout``, row i for the pair whose
    ``index`` is i, in eval mode; with ``adapter_off`` the adapter is switched off (the base model)."""
    was_training = model.training
    model.eval()
    size = max(p.index for p in layout.items) + 1
    table = torch.zeros((size, 2), dtype=torch.float32)
    with model.disable_adapter() if adapter_off else nullcontext():
        for i in range(layout.per_epoch):
            b = layout.batch(i)
            logps = sequence_logps(model, b.to(device))[0].float().cpu()
            table[b.indices, 0] = logps[: b.pairs]
            table[b.indices, 1] = logps[b.pairs :]
    if was_training:
        model.train()
    return table


def build_objective(config, path: TrainingPath) -> SftObjective | PreferenceObjective:
    """The objective ``training.objective`` names, built once for the run (``config``: the resolved config)."""
    t = config.training
    if t.objective == "sft":
        return SftObjective(path.loss)
    reference = t.reference
    if reference == "auto":
        reference = "cached" if config.lora.init_from else "adapter_off"
    # With Liger's kernel set (CUDA) the SFT head never holds the logits; the preference loss needs each row's own
    # log-probability (not one summed loss), so its head keeps per-token values and recomputes its chunks instead.
    return PreferenceObjective(t.objective, t.beta, reference, recompute_head=path.precision.liger, gamma=t.simpo_gamma)


def preference_summary(objective: str, history: dict) -> dict:
    """The summary's preference numbers (empty for sft): the last step's pair metrics and validation's at the
    start and end of the run."""
    if objective == "sft":
        return {}
    val = history.get("validation") or []
    keep = (*PAIR_METRICS, "nll_loss", "log_odds_ratio")

    def pick(record: dict | None) -> dict | None:
        return {k: record[k] for k in keep if k in record} if record else None

    return {
        "preference": {
            "train_last": pick(history.get("train_metrics_last")),
            "validation_start": pick(val[0] if val else None),
            "validation_end": pick(val[-1] if val else None),
        }
    }
