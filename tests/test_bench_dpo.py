"""The bench's DPO case (data p) on CPU: stock (TRL's DPOTrainer computation on the stock model) and kielo (the
objective `kielo train` runs) give the same DPO loss and LoRA gradients, a swapped pair breaks that, and the case
runs end to end through `kielo bench --shape tiny`."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("trl")

CPU = torch.device("cpu")


def _stack(name: str, folder):
    """A bench variant on ``folder`` with LoRA B set to the same small random values in both stacks (in name
    order), so that policy and reference differ and the loss is not just log 2."""
    from kielo.bench.cases import VARIANTS
    from kielo.bench.models import load, trainable

    stack = load(VARIANTS[name], folder, CPU)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in trainable(stack.model):
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return stack


def _step(stack, pairs, mbs=2):
    """One bench DPO step of ``stack``: its loss and its flattened LoRA gradients."""
    from kielo.bench.cases import Case
    from kielo.bench.dpo import pair_batches
    from kielo.bench.models import trainable
    from kielo.bench.steps import step_function

    params = trainable(stack.model)
    for _, p in params:
        p.grad = None
    vocab = stack.model.config.vocab_size
    loss = step_function(stack, Case("p", "p"))(stack.model, pair_batches(pairs, stack.path, mbs, vocab - 1), CPU)
    return loss, torch.cat([p.grad.detach().flatten() for _, p in params]).double()


def test_stock_and_kielo_dpo_steps_agree_and_a_swapped_pair_breaks_it(tiny_llama):
    from kielo.bench.dpo import pair_examples, trl_collate
    from kielo.data.pairs import Pair, collate_pairs

    stock, kielo = _stack("stock", tiny_llama), _stack("kielo", tiny_llama)
    vocab = stock.model.config.vocab_size
    (pairs,) = pair_examples(1, 4, 128, vocab, seed=3, mean_tokens=12)
    # TRL's collator and kielo's lay a micro-batch out the same way: chosen rows, then rejected, right-padded.
    ours, theirs = collate_pairs(pairs[:2], vocab - 1), trl_collate(pairs[:2], vocab - 1)
    assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.labels, theirs.labels)
    assert ours.trained_tokens == theirs.trained_tokens and ours.real_tokens == theirs.real_tokens

    loss_s, grad_s = _step(stock, pairs)
    loss_k, grad_k = _step(kielo, pairs)
    cos = float(torch.nn.functional.cosine_similarity(grad_s, grad_k, dim=0))
    assert abs(loss_s - math.log(2)) > 1e-3  # policy and reference differ
    assert abs(loss_s - loss_k) < 1e-5 and cos > 0.99999, (loss_s, loss_k, cos)

    # The first pair's answers swapped in kielo's data only: the losses and gradients part.
    swapped = [Pair(pairs[0].rejected, pairs[0].chosen, pairs[0].index), *pairs[1:]]
    loss_w, grad_w = _step(kielo, swapped)
    cos_w = float(torch.nn.functional.cosine_similarity(grad_s, grad_w, dim=0))
    assert abs(loss_s - loss_w) > 1e-3 and cos_w < 0.99, (loss_s, loss_w, cos_w)


def test_bench_dpo_case_runs_stock_and_kielo_end_to_end(tmp_path):
    from kielo.cli import main

    small = ["--shape", "tiny", "--max-length", "256", "--pairs-per-step", "4", "--pair-tokens", "16"]
    steps = ["--warmup-p", "1", "--timed-p", "1", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main(["bench", *small, *steps, "--cases", "stock:p kielo:p"]) == 0
    stock, kielo = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert (stock["head"], kielo["head"]) == ("trl", "dpo_chunked")
    for r in (stock, kielo):
        assert "error" not in r and r["tok_s"] > 0 and r["pairs_s"] > 0 and r["model_tflops"] > 0
        # LoRA B starts at zero: policy = reference, so the first step's loss is log 2 on both stacks
        assert abs(r["losses"][0] - math.log(2)) < 1e-5  # results keep 5 decimals
        assert "planned_gib" not in r  # the memory planner models SFT steps only
    assert stock["real_tokens_per_step"] == kielo["real_tokens_per_step"]
    assert kielo["max_loss_delta"] < 1e-3 and min(kielo["grad_cosine"]) > 0.999


def test_dpo_case_is_for_stock_and_kielo_steps_only():
    from kielo.bench.cases import PRODUCT, parse_cases
    from kielo.errors import KieloError

    (entry,) = parse_cases("kielo:p/mbs=4", PRODUCT)
    assert entry.cases[0].mbs == 4 and not entry.cases[0].planned
    with pytest.raises(KieloError, match="the DPO case runs stock's and kielo's own DPO steps"):
        parse_cases("stock:a unsloth:p", PRODUCT)
    with pytest.raises(KieloError, match="data must be a, b or p"):
        parse_cases("kielo:q", PRODUCT)
