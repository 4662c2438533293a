"""Preference training (DPO, ORPO): losses and LoRA gradients against independent computations, the direction of
training, a CLI run, starting from an adapter, and clear errors for bad preference data.

The independent side runs the whole model (``model(...).logits``, chosen and rejected in separate forwards) and
writes DPO's formula out (Rafailov et al. 2023, eq. 7); ORPO's odds-ratio term is TRL's own function.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import PAIRS, ROWS, tiny_config

from kielo.cli import main
from kielo.data.batches import collate_padded
from kielo.data.pairs import Pair, PairLayout, collate_pairs, pair_statistics
from kielo.data.preference import load_pairs
from kielo.data.prepare import prepare_data, read_data
from kielo.model.adapter import start_adapter
from kielo.model.bundle import load_bundle
from kielo.train.preference import PreferenceObjective
from kielo.train.trainer import train


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return jsonl(tmp_path / "pairs.jsonl", PAIRS * 3)


def policy(tiny_llama, pairs_file, tmp_path, objective="dpo"):
    """A 4-bit tiny model with a LoRA adapter moved off its zero start (so policy and reference differ), and
    its encoded pairs."""
    cfg = tiny_config(tiny_llama, pairs_file, tmp_path / "o", data={"validation_split": 0.0}, training={"objective": objective})
    bundle = load_bundle(cfg, for_training=True)
    items, _, _ = prepare_data(bundle, read_data(cfg))
    model = start_adapter(bundle.model, cfg.lora)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model, items, bundle.tokenizer.pad_token_id


def full_logps(model, items):
    """Summed answer log-probabilities per example from the full logits of a forward of their own."""
    b = collate_padded(items, 0)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
    targets = b.labels[:, 1:]
    mask = targets != -100
    token = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (token * mask).sum(1), mask.sum(1)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_grads_close(a, b, tol=1e-5):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("packed", [False, True])
def test_dpo_loss_and_gradients_match_the_formula(tiny_llama, pairs_file, tmp_path, packed):
    """Padded pairs, and the pairs' sides in one packed row (the varlen-attention layout; on CPU its block mask)."""
    model, items, pad = policy(tiny_llama, pairs_file, tmp_path)
    batch = items[:4]
    beta = 0.1
    micro = [collate_pairs(batch, pad, packed=packed)]
    assert (micro[0].input_ids.shape[0] == 1) == packed and (micro[0].input_ids != pad).all() == packed
    loss, metrics = PreferenceObjective("dpo", beta).accumulate(model, micro, torch.device("cpu"))
    ours = grads(model)
    model.zero_grad(set_to_none=True)

    pc, _ = full_logps(model, [p.chosen for p in batch])
    pr, _ = full_logps(model, [p.rejected for p in batch])
    with torch.no_grad(), model.disable_adapter():
        rc, _ = full_logps(model, [p.chosen for p in batch])
        rr, _ = full_logps(model, [p.rejected for p in batch])
    logits = beta * ((pc - rc) - (pr - rr))
    expected = -F.logsigmoid(logits).mean()
    expected.backward()

    assert abs(loss - float(expected)) < 1e-5
    assert abs(loss - math.log(2)) > 1e-3, "the adapter was moved: policy and reference must differ"
    assert_grads_close(ours, grads(model))
    assert abs(metrics["rewards/margin"] - float(logits.mean())) < 1e-5
    assert abs(metrics["rewards/chosen"] - float(beta * (pc - rc).mean())) < 1e-5
    assert abs(metrics["logps/rejected"] - float(pr.mean())) < 1e-4
    assert metrics["rewards/accuracy"] == float((logits > 0).float().mean())


@pytest.mark.parametrize("packed", [False, True])
def test_orpo_loss_and_gradients_match_trl(tiny_llama, pairs_file, tmp_path, packed):
    trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    model, items, pad = policy(tiny_llama, pairs_file, tmp_path, "orpo")
    batch = items[:4]
    beta = 0.25
    # Two micro-batches of two pairs: accumulation must give the one-batch loss and gradients.
    micro = [collate_pairs(batch[:2], pad, packed=packed), collate_pairs(batch[2:], pad, packed=packed)]
    loss, metrics = PreferenceObjective("orpo", beta).accumulate(model, micro, torch.device("cpu"))
    ours = grads(model)
    model.zero_grad(set_to_none=True)

    pc, nc = full_logps(model, [p.chosen for p in batch])
    pr, nr = full_logps(model, [p.rejected for p in batch])
    trainer = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen_r, rejected_r, _, log_odds = trl_orpo.ORPOTrainer.odds_ratio_loss(trainer, pc / nc, pr / nr)
    nll = -pc.sum() / nc.sum()  # TRL's cross-entropy over the chosen answers' tokens
    expected = nll - losses.mean()
    expected.backward()

    assert abs(loss - float(expected)) < 1e-5
    assert_grads_close(ours, grads(model))
    assert abs(metrics["nll_loss"] - float(nll)) < 1e-5
    assert abs(metrics["log_odds_ratio"] - float(log_odds)) < 1e-5
    assert abs(metrics["rewards/margin"] - float((chosen_r - rejected_r).mean())) < 1e-5


@pytest.mark.parametrize("packed", [False, True])
def test_simpo_loss_and_gradients_match_trl(tiny_llama, pairs_file, tmp_path, packed):
    """SimPO against TRL's CPOTrainer.cpo_loss with loss_type simpo (cpo_alpha 0: no answer loss), on each
    answer's mean token log-probability from the full logits."""
    trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    model, items, pad = policy(tiny_llama, pairs_file, tmp_path, "simpo")
    batch = items[:4]
    beta, gamma = 2.0, 0.7
    micro = [collate_pairs(batch[:2], pad, packed=packed), collate_pairs(batch[2:], pad, packed=packed)]
    loss, metrics = PreferenceObjective("simpo", beta, gamma=gamma).accumulate(model, micro, torch.device("cpu"))
    ours = grads(model)
    model.zero_grad(set_to_none=True)

    pc, nc = full_logps(model, [p.chosen for p in batch])
    pr, nr = full_logps(model, [p.rejected for p in batch])
    trainer = SimpleNamespace(
        alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )  # fmt: skip
    losses, chosen_r, rejected_r = trl_cpo.CPOTrainer.cpo_loss(trainer, pc / nc, pr / nr)
    expected = losses.mean()
    expected.backward()

    assert abs(loss - float(expected)) < 1e-5
    # The check sees the length normalisation: the same loss over summed log-probabilities is another number.
    assert abs(loss - float(-F.logsigmoid(beta * (pc - pr) - gamma).mean())) > 1e-3
    assert all(g.abs().sum() > 0 for k, g in ours.items() if "lora_A" in k)
    assert_grads_close(ours, grads(model))
    assert abs(metrics["rewards/margin"] - float((chosen_r - rejected_r).mean())) < 1e-5
    assert abs(metrics["logps/chosen"] - float((pc / nc).mean())) < 1e-5
    assert metrics["rewards/accuracy"] == float((chosen_r > rejected_r).float().mean())


def test_cli_simpo_run_learns_the_preference_without_a_reference(tiny_llama, tmp_path):
    """`kielo train --training.objective simpo`: the adapter moves, validation's margin rises from its start, and
    the trained adapter ranks the pairs the other way round once they are swapped."""
    from safetensors.torch import load_file

    data = jsonl(tmp_path / "pairs.jsonl", PAIRS * 3)
    argv = ["train", "--model", str(tiny_llama), "--data.train", str(data), "--data.validation_split", "0.25"]
    argv += ["--training.objective", "simpo", "--training.beta", "2", "--training.max_steps", "6", "--training.micro_batch_size", "2"]
    argv += ["--training.learning_rate", "5e-3", "--lora.r", "4", "--lora.dropout", "0", "--training.device", "cpu"]
    out = tmp_path / "run"
    assert main([*argv, "--output_dir", str(out)]) == 0
    lora_b = [w for k, w in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "LoRA B starts at zero; training must move it"
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "validation"]
    assert val[-1]["rewards/margin"] > val[0]["rewards/margin"]
    assert not (out / "reference_logps.pt").exists()  # no reference
    cfg = tiny_config(tiny_llama, data, tmp_path / "o", data={"validation_split": 0.0}, training={"objective": "simpo", "beta": 2.0})
    bundle = load_bundle(cfg, for_training=False, adapter=str(out))
    items, _, _ = prepare_data(bundle, read_data(cfg))
    pad = bundle.tokenizer.pad_token_id
    obj = PreferenceObjective("simpo", 2.0, gamma=0.5)
    right = obj.evaluate(bundle.model, PairLayout(items, 4, pad, 0, shuffle=False), bundle.device)
    swapped = [Pair(p.rejected, p.chosen, p.index) for p in items]
    wrong = obj.evaluate(bundle.model, PairLayout(swapped, 4, pad, 0, shuffle=False), bundle.device)
    assert right["rewards/margin"] > 0
    assert wrong["rewards/margin"] == pytest.approx(-right["rewards/margin"], abs=1e-5)
    assert right["loss"] < wrong["loss"]


def test_cached_reference_equals_adapter_off(tiny_llama, pairs_file, tmp_path):
    model, items, pad = policy(tiny_llama, pairs_file, tmp_path)
    layout = PairLayout(items, 4, pad, seed=0, shuffle=False)
    live = PreferenceObjective("dpo", 0.1, "adapter_off").evaluate(model, layout, torch.device("cpu"))
    PreferenceObjective("dpo", 0.1, "cached").prepare(model, {"train": layout}, torch.device("cpu"), tmp_path, False, False)
    assert layout.reference is not None and (tmp_path / "reference_logps.pt").is_file()
    cached = PreferenceObjective("dpo", 0.1, "cached").evaluate(model, layout, torch.device("cpu"))
    for k in ("loss", "rewards/margin", "rewards/chosen"):
        assert abs(live[k] - cached[k]) < 1e-5, k
    assert abs(live["loss"] - math.log(2)) > 1e-3


@pytest.fixture(scope="module")
def dpo_run(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    data = jsonl(d / "pairs.jsonl", PAIRS * 3)
    argv = ["train", "--model", str(tiny_llama), "--data.train", str(data), "--data.validation_split", "0.25"]
    argv += ["--training.objective", "dpo", "--training.beta", "0.5", "--training.max_steps", "6", "--training.micro_batch_size", "2"]
    argv += ["--training.learning_rate", "5e-3", "--lora.r", "4", "--lora.dropout", "0", "--training.device", "cpu"]
    assert main([*argv, "--output_dir", str(d / "run")]) == 0
    return d / "run", data


def test_cli_dpo_run_moves_the_adapter_and_writes_pair_metrics(dpo_run):
    from safetensors.torch import load_file

    out, _ = dpo_run
    lora_b = [w for k, w in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "LoRA B starts at zero; training must move it"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for split in ("train", "validation"):
        rec = [r for r in records if r["split"] == split]
        assert rec and all(k in rec[-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"))
        assert all(k in rec[-1] for k in ("logps/chosen", "logps/rejected"))
    val = [r for r in records if r["split"] == "validation"]
    assert val[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a new adapter: policy = reference
    assert val[-1]["rewards/margin"] > 0 and val[-1]["loss"] < math.log(2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "dpo"
    assert summary["preference"]["validation_end"]["rewards/margin"] == pytest.approx(val[-1]["rewards/margin"])


def test_swapping_chosen_and_rejected_reverses_the_preference(dpo_run, tiny_llama, tmp_path):
    """The trained adapter prefers the chosen answers; the same pairs swapped must score the other way."""
    out, data = dpo_run
    cfg = tiny_config(tiny_llama, data, tmp_path / "o", data={"validation_split": 0.0}, training={"objective": "dpo", "beta": 0.5})
    bundle = load_bundle(cfg, for_training=False, adapter=str(out))
    items, _, _ = prepare_data(bundle, read_data(cfg))
    pad = bundle.tokenizer.pad_token_id
    swapped = [Pair(p.rejected, p.chosen, p.index) for p in items]
    obj = PreferenceObjective("dpo", 0.5)
    right = obj.evaluate(bundle.model, PairLayout(items, 4, pad, 0, shuffle=False), bundle.device)
    wrong = obj.evaluate(bundle.model, PairLayout(swapped, 4, pad, 0, shuffle=False), bundle.device)
    assert right["rewards/margin"] > 0 and right["rewards/accuracy"] > 0.5
    assert wrong["rewards/margin"] == pytest.approx(-right["rewards/margin"], abs=1e-5)
    assert wrong["rewards/accuracy"] == pytest.approx(1 - right["rewards/accuracy"])
    assert right["loss"] < math.log(2) < wrong["loss"]


def test_recomputed_head_gives_the_same_logps_and_gradients_without_keeping_logits(tiny_llama, pairs_file, tmp_path):
    """The Liger path's preference head (``recompute_head``): the same log-probabilities and LoRA gradients, and no
    tensor as wide as the vocabulary saved for the backward (the plain chunked head saves its logits)."""
    from kielo.train.preference import sequence_logps

    model, items, pad = policy(tiny_llama, pairs_file, tmp_path)
    batch = collate_pairs(items[:4], pad)
    vocab = model.config.vocab_size
    results = {}
    for recompute in (False, True):
        model.zero_grad(set_to_none=True)
        widths: list[int] = []

        def pack(t, widths=widths):
            widths.append(t.shape[-1] if t.dim() else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logps, _ = sequence_logps(model, batch, recompute_head=recompute)
        (logps * torch.linspace(-1, 1, logps.numel())).sum().backward()  # a different weight per row, as DPO's
        results[recompute] = (logps.detach(), grads(model), vocab in widths)
    (plain, plain_grads, plain_keeps), (ours, our_grads, our_keeps) = results[False], results[True]
    assert torch.allclose(plain, ours, atol=1e-6, rtol=0)
    assert_grads_close(plain_grads, our_grads, tol=1e-6)
    assert plain_keeps and not our_keeps


def test_dpo_from_an_sft_adapter_uses_it_as_the_reference(tiny_llama, tmp_path):
    sft_data = jsonl(tmp_path / "sft.jsonl", ROWS * 3)
    sft = tiny_config(tiny_llama, sft_data, tmp_path / "sft", data={"validation_split": 0.0}, training={"max_steps": 3})
    train(sft, progress=False)
    pairs = jsonl(tmp_path / "pairs.jsonl", PAIRS * 3)
    dpo = tiny_config(
        tiny_llama,
        pairs,
        tmp_path / "dpo",
        lora={"r": 8, "init_from": str(tmp_path / "sft")},
        training={"objective": "dpo", "max_steps": 2},
    )
    summary = train(dpo, progress=False)
    out = tmp_path / "dpo"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The reference is the SFT adapter itself: at the start the policy equals it, so every reward is 0 ...
    assert records[0]["split"] == "validation" and records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[1]["split"] == "train" and records[1]["rewards/margin"] == pytest.approx(0, abs=1e-6)
    # ... while against the base the SFT adapter already has non-zero rewards.
    bundle = load_bundle(dpo, for_training=True)
    items, val, _ = prepare_data(bundle, read_data(dpo))
    model = start_adapter(bundle.model, replace_lora_from(dpo))
    base_ref = PreferenceObjective("dpo", 0.1).evaluate(
        model, PairLayout(val, 4, bundle.tokenizer.pad_token_id, 0, False), bundle.device
    )
    assert abs(base_ref["rewards/margin"]) > 1e-4
    assert (out / "reference_logps.pt").is_file()
    saved = (out / "kielo_config.yaml").read_text()
    assert "r: 4" in saved and "init_from" in saved  # the adapter's own rank, not the config's 8
    assert summary["preference"]["validation_start"]["rewards/accuracy"] == 0


def test_dpo_from_an_sft_run_takes_its_prompt_format(tiny_gemma, tmp_path):
    """An SFT run's template and system prompt come with ``lora.init_from`` (the tokenizer's chat template would
    be `auto`'s pick here); a template given explicitly wins."""
    from kielo.config.load import from_dict, read_yaml
    from kielo.model.bundle import effective_config

    sft_data = jsonl(tmp_path / "sft.jsonl", ROWS * 2)
    sft = tiny_config(
        tiny_gemma,
        sft_data,
        tmp_path / "sft",
        data={"validation_split": 0.0, "template": "builtin", "system_prompt": "Vastaa lyhyesti."},
        training={"max_steps": 1},
    )
    sft_summary = train(sft, progress=False)
    pairs = jsonl(tmp_path / "pairs.jsonl", PAIRS * 2)
    lora = {"init_from": str(tmp_path / "sft")}
    dpo = tiny_config(
        tiny_gemma, pairs, tmp_path / "dpo", lora=lora, data={"validation_split": 0.0}, training={"objective": "dpo", "max_steps": 1}
    )
    assert dpo.data.template == "auto"
    summary = train(dpo, progress=False)
    saved = from_dict(read_yaml(tmp_path / "dpo" / "kielo_config.yaml"))
    assert (saved.data.template, saved.data.system_prompt) == ("builtin", "Vastaa lyhyesti.")
    assert (summary["template"], summary["end_token"]) == ("builtin", sft_summary["end_token"])
    explicit = tiny_config(tiny_gemma, pairs, tmp_path / "x", lora=lora, data={"template": "chat", "system_prompt": "Ole kohtelias."})
    resolved = effective_config(explicit)[0].data
    assert (resolved.template, resolved.system_prompt) == ("chat", "Ole kohtelias.")
    plain = tiny_config(tiny_gemma, pairs, tmp_path / "y")  # no init_from: auto stays auto (the chat template)
    assert effective_config(plain)[0].data.template == "auto"


def replace_lora_from(config):
    from kielo.model.adapter import init_adapter_settings

    return init_adapter_settings(config.lora)


BAD = [
    ("no-rejected", [{"prompt": "a", "chosen": "b"}], "pairs.jsonl:1: missing field(s) rejected"),
    (
        "identical",
        [PAIRS[0], {"prompt": "a", "chosen": "sama", "rejected": "sama "}],
        "pairs.jsonl:2: `chosen` and `rejected` are the same",
    ),
    ("empty-answer", [{"instruction": "a", "chosen": " ", "rejected": "b"}], "pairs.jsonl:1: `chosen` is empty"),
    ("sft-rows", [ROWS[0]], "pairs.jsonl:1: an SFT row (has `output`, no `chosen` or `rejected`)"),
    ("no-prompt", [{"chosen": "a", "rejected": "b"}], "pairs.jsonl:1: no prompt"),
]


@pytest.mark.parametrize("rows,expect", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_preference_data_is_one_clear_error(rows, expect, tiny_llama, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", rows)
    argv = ["train", "--model", str(tiny_llama), "--data.train", str(data), "--training.objective", "dpo"]
    assert main([*argv, "--output_dir", str(tmp_path / "out"), "--training.device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect in err, err
    assert "fix:" in err


def test_preference_rows_given_to_sft_name_the_objective(tiny_llama, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", PAIRS[2:])
    assert main(["train", "--model", str(tiny_llama), "--data.train", str(data), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "a preference row (has chosen/rejected, no output)" in err and "training.objective dpo, orpo or simpo" in err, err


def test_pair_statistics_count_lengths_prefixes_and_truncation(tiny_llama, tmp_path):
    pairs = load_pairs(jsonl(tmp_path / "p.jsonl", PAIRS))
    cfg = tiny_config(tiny_llama, tmp_path / "p.jsonl", tmp_path / "o", data={"max_length": 24})
    encoder = load_bundle(cfg, for_training=False).encoder
    stats = pair_statistics(encoder, pairs)
    assert stats["pairs"] == 4
    assert stats["length_difference"] == [
        c - r for c, r in zip(stats["chosen_answer_tokens"], stats["rejected_answer_tokens"], strict=True)
    ]
    # "5" vs "7, koska ...": no shared tokens; every answer ends with the end token, none shares it first.
    assert all(
        p < min(c, r)
        for p, c, r in zip(stats["shared_prefix_tokens"], stats["chosen_answer_tokens"], stats["rejected_answer_tokens"], strict=True)
    )
    lengths = [
        (len(encoder.encode(p.example("chosen")).input_ids), len(encoder.encode(p.example("rejected")).input_ids)) for p in pairs
    ]
    assert stats["truncated_either"] == sum(c > 24 or r > 24 for c, r in lengths) > 0
    assert stats["truncated_chosen"] == sum(c > 24 for c, _ in lengths)


def test_analyze_data_reports_pairs(tiny_llama, tmp_path):
    from kielo.analyze.report import summary
    from kielo.analyze.run import analyze_data

    data = jsonl(tmp_path / "p.jsonl", PAIRS)
    cfg = tiny_config(tiny_llama, data, tmp_path / "o", data={"max_length": 24})
    result = analyze_data([data], cfg, examples=1, workers=1)
    pairs = result["pairs"]["p"]
    assert pairs["pairs"] == 4 and pairs["truncated_either"] > 0
    assert pairs["length_difference"]["max"] >= pairs["length_difference"]["min"]
    assert "Preference pairs" in summary(result)
