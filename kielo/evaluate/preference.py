"""Held-out preference pairs in a comparison: how much each model prefers the chosen answer, DPO's way.

Every model of a comparison (the base and each adapter) scores both answers of every pair: the summed
log-probability of the answer tokens (and the end token), encoded as evaluation encodes examples (the
prompt masked, overlong pairs truncated). The implicit reward is DPO's, with the base (every adapter off)
as the reference for all models, so they share one scale::

    reward(answer) = beta * (log p_model(answer) - log p_base(answer))
    margin         = reward(chosen) - reward(rejected)

Per model: the preference accuracy (share of pairs with a positive margin; a tie, which is what the base
scores against itself, counts half, so the base is 50% by construction), the mean margin, the log-prob
accuracy (share of pairs where the model itself gives the chosen answer the higher log-probability: the
one preference number that is informative for the base too) and the mean log-probabilities of the chosen
and rejected answers, each with a bootstrap interval over pairs. Paired differences (bootstrap over pairs)
are taken against the first adapter when there are two or more (SFT vs SFT+DPO: the difference of margins
is then exactly DPO's own reward margin against the SFT adapter), else against the base.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kielo.config.schema import TrainingConfig
from kielo.data.pairs import Pair, collate_pairs, encode_pairs
from kielo.data.preference import load_pairs
from kielo.evaluate import stats
from kielo.evaluate.loss import eval_encoder
from kielo.model.bundle import Bundle, use_variant
from kielo.model.source import resolve_adapter
from kielo.train.preference import sequence_logps

log = logging.getLogger(__name__)

BASE = "base"
# (key, label, shown as a share). Accuracies are shares 0-1; the margin is in reward units (beta * nats),
# log-probabilities in nats summed over an answer's tokens.
METRICS = (
    ("accuracy", "preference accuracy (implicit reward)", True),
    ("margin", "reward margin (chosen - rejected)", False),
    ("logp_accuracy", "log-prob accuracy (p(chosen) > p(rejected))", True),
    ("logps_chosen", "log p(chosen answer)", False),
    ("logps_rejected", "log p(rejected answer)", False),
)
KIND_KEY = "rejected_kind"


def choose_beta(adapters: list[str], default: float) -> tuple[float, str]:
    """The beta of the DPO runs among ``adapters`` when they agree, else ``default``; and where it came from."""
    betas = set()
    for path in adapters:
        _, run = resolve_adapter(path)
        training = (run or {}).get("training") or {}
        if training.get("objective") == "dpo" and training.get("beta") is not None:
            betas.add(float(training["beta"]))
    if len(betas) == 1:
        return betas.pop(), "the DPO run's training.beta"
    return default, "the default training.beta" + (" (the DPO runs' betas differ)" if betas else "")


def encode_preference_pairs(bundle: Bundle, path: str | Path) -> tuple[list, list[Pair], dict]:
    """The file's pairs (validated), those encoded with evaluation's masking (truncated, never dropped unless no
    answer token is left), and what encoding did (:class:`~kielo.data.pairs.PairStats` as a dict)."""
    pairs = load_pairs(path, bundle.config.data.system_prompt, given_with="--preference_data")
    encoded, pair_stats = encode_pairs(eval_encoder(bundle), pairs)
    if pair_stats.truncated or pair_stats.dropped_no_target or pair_stats.dropped_identical:
        log.warning(
            "preference pairs: %d truncated to data.max_length=%d, %d without an answer token left, %d identical after "
            "truncation (the last two are left out)",
            pair_stats.truncated,
            bundle.config.data.max_length,
            pair_stats.dropped_no_target,
            pair_stats.dropped_identical,
        )
    return pairs, encoded, pair_stats.report()


@torch.no_grad()
def pair_logps(bundle: Bundle, encoded: list[Pair], pairs_per_batch: int) -> torch.Tensor:
    """(len(encoded), 2) summed answer log-probabilities (chosen, rejected) with the bundle's current model."""
    pad = bundle.tokenizer.pad_token_id
    out = torch.zeros((len(encoded), 2), dtype=torch.float64)
    # Similar lengths together: padding costs compute, and the numbers don't depend on the grouping.
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    for at in range(0, len(order), pairs_per_batch):
        rows = order[at : at + pairs_per_batch]
        batch = collate_pairs([encoded[i] for i in rows], pad).to(bundle.device)
        logps = sequence_logps(bundle.model, batch)[0].double().cpu()
        out[rows, 0] = logps[: len(rows)]
        out[rows, 1] = logps[len(rows) :]
    return out


def per_pair(logps: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, list[float]]:
    """Each pair's metrics (see :data:`METRICS`) for one model's log-probabilities against the reference's."""
    rewards = beta * (logps - reference)
    margin = rewards[:, 0] - rewards[:, 1]
    # sign() is 0 for a tie: a tie counts half, so a model scored against itself sits at 50%.
    accuracy = (margin.sign() + 1) / 2
    logp_accuracy = ((logps[:, 0] - logps[:, 1]).sign() + 1) / 2
    return {
        "accuracy": accuracy.tolist(),
        "margin": margin.tolist(),
        "logp_accuracy": logp_accuracy.tolist(),
        "logps_chosen": logps[:, 0].tolist(),
        "logps_rejected": logps[:, 1].tolist(),
    }


def _means(values: dict[str, list[float]], resamples: int) -> dict:
    return {key: stats.bootstrap_mean(values[key], resamples=resamples) for key, _, _ in METRICS}


def _by_kind(kinds: list[str | None], values: dict[str, list[float]], resamples: int) -> dict:
    """Preference accuracy within each kind of rejected answer (rows tagged with ``rejected_kind``)."""
    out = {}
    for kind in sorted({k for k in kinds if k}):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        out[kind] = {
            key: stats.bootstrap_mean([values[key][i] for i in idx], resamples=resamples) for key in ("accuracy", "logp_accuracy")
        }
    return out


def score_preferences(bundle: Bundle, variants: list[str], path: str | Path, beta: float, resamples: int, progress=None) -> dict:
    """Score every variant (``"base"`` first) of ``bundle`` on the preference pairs in ``path``.

    Returns ``{path, pairs, encoding, beta, reference, baseline, models: {name: {metric: interval}},
    by_kind: {name: {kind: {accuracy, logp_accuracy}}}, deltas: {name: {metric: paired interval}}, per_pair:
    {name: {metric: [value per pair]}}, ids}``; intervals as :func:`kielo.evaluate.stats.bootstrap_mean` and
    :func:`~kielo.evaluate.stats.paired_bootstrap` give them.
    """
    if not variants or variants[0] != BASE:
        raise ValueError("the base must be the first variant: it is the reference of the implicit reward")
    pairs, encoded, encoding = encode_preference_pairs(bundle, path)
    # Two rows per pair; the loss pass's batch size, halved, keeps the same memory.
    per_batch = max(1, bundle.config.training.micro_batch_size * (2 if bundle.config.data.packing else 1))
    logps = {}
    for name in variants:
        with use_variant(bundle, name):
            logps[name] = pair_logps(bundle, encoded, per_batch)
        if progress is not None:
            progress(name)
    reference = logps[BASE]
    values = {name: per_pair(lp, reference, beta) for name, lp in logps.items()}
    kinds = [pairs[p.index].meta.get(KIND_KEY) for p in encoded]
    adapters = variants[1:]
    baseline = adapters[0] if len(adapters) >= 2 else BASE
    deltas = {
        name: {key: stats.paired_bootstrap(values[baseline][key], values[name][key], resamples=resamples) for key, _, _ in METRICS}
        for name in variants
        if name not in (BASE, baseline)
    }
    return {
        "path": str(path),
        "pairs": len(encoded),
        "encoding": encoding,
        "beta": beta,
        "reference": BASE,
        "baseline": baseline,
        "models": {name: _means(v, resamples) for name, v in values.items()},
        "by_kind": {name: _by_kind(kinds, v, resamples) for name, v in values.items()},
        "deltas": deltas,
        "per_pair": values,
        "ids": [pairs[p.index].meta.get("id", pairs[p.index].source) for p in encoded],
    }


def compare_pairs(
    bundle: Bundle, variants: list[str], adapters: list[str], path: str | Path, beta: float | None, resamples: int
) -> dict:
    """:func:`score_preferences` as ``kielo compare`` runs it: ``beta`` None takes the DPO runs' beta among
    ``adapters`` (:func:`choose_beta`); the result says where beta came from and how long scoring took."""
    beta_from = "--beta"
    if beta is None:
        beta, beta_from = choose_beta(adapters, TrainingConfig().beta)
    started = time.time()
    result = score_preferences(
        bundle, variants, path, beta, resamples, progress=lambda name: log.info("preference pairs: %s scored", name)
    )
    log.info("preference pairs: %d pairs, %d models in %.1fs", result["pairs"], len(variants), time.time() - started)
    return {**result, "beta_from": beta_from, "seconds": round(time.time() - started, 2)}


def compact(result: dict | None) -> dict | None:
    """The machine-readable summary of :func:`score_preferences`: each model's means and each paired difference
    with their intervals, without the per-pair values."""
    if result is None:
        return None
    keep = ("value", "low", "high", "n")
    keep_delta = ("delta", "low", "high", "n", "p_value")
    return {
        "pairs": result["pairs"],
        "beta": result["beta"],
        "reference": result["reference"],
        "baseline": result["baseline"],
        "models": {n: {k: ({f: ci[f] for f in keep} if ci else None) for k, ci in m.items()} for n, m in result["models"].items()},
        "deltas": {
            n: {k: ({f: ci[f] for f in keep_delta} if ci else None) for k, ci in d.items()} for n, d in result["deltas"].items()
        },
    }
