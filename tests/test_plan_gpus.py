"""The memory plan per GPU for runs over several GPUs (DDP and FSDP), and the known hub configs it sizes
offline (`kielo plan --gpus N --model HUB_ID`)."""

from __future__ import annotations

import pytest
import torch

from kielo.config.load import from_dict
from kielo.errors import KieloError
from kielo.model.precision import Precision
from kielo.plan.known import KNOWN_CONFIGS, known_config
from kielo.plan.memory import GIB, quantized_bytes_per_param
from kielo.plan.parallel import per_gpu_estimate
from kielo.plan.planner import full_rows, make_plan, pick_strategy, setup_for
from kielo.plan.shape import shape_from_config

BF16 = Precision(torch.bfloat16, False)
BUDGET_80 = 80 * GIB - 2**29  # what kielo plan --gpu_memory 80 budgets


# Published parameter counts (the models' safetensors index / model cards): a wrong width, depth or vocabulary
# in the table moves these by far more than the tolerance.
@pytest.mark.parametrize(
    "hub_id, params",
    [
        ("meta-llama/Llama-3.1-8B", 8_030_261_248),
        ("meta-llama/Llama-3.1-70B", 70_553_706_496),
        ("LumiOpen/Llama-Poro-2-70B-base", 70_553_706_496),
        ("LumiOpen/Poro-34B", 34.2e9),
        ("google/gemma-3-270m", 268_098_176),
        ("google/gemma-3-1b-pt", 999_885_952),
        ("google/gemma-3-4b-pt", 4_300_079_472),
        ("google/gemma-3-27b-it", 27.43e9),
    ],
)
def test_known_configs_have_the_published_parameter_counts(hub_id, params):
    shape = shape_from_config(known_config(hub_id))
    total = shape.quantized_params + shape.embedding_params + shape.head_params + shape.other_params
    assert total == pytest.approx(params, rel=2e-3)


def test_every_known_config_builds():
    for hub_id in KNOWN_CONFIGS:
        assert shape_from_config(known_config(hub_id)).n_layers > 0
    assert known_config("meta-llama/llama-3.1-70b") is not None  # hub ids are case-insensitive
    assert known_config("someone/unknown-model") is None


def _config(max_length: int, mbs: int = 1, offload: str = "off"):
    return from_dict({"data": {"max_length": max_length}, "training": {"micro_batch_size": mbs, "checkpoint_offload": offload}})


def _plans(max_length: int, gpus: int = 2, offload: str = "off"):
    config = _config(max_length, offload=offload)
    shape = shape_from_config(known_config("meta-llama/Llama-3.1-70B"))
    data = full_rows(config)
    return {s: make_plan(config, shape, BF16, data, BUDGET_80, "fit", gpus, s) for s in ("ddp", "fsdp")}, shape


def test_70b_on_two_80gb_cards_long_rows_fit_with_fsdp_not_ddp():
    """20k-token rows: each DDP rank holds all 80 layers' 4-bit weights (36.8 GiB) beside the activations and
    does not fit; FSDP halves the layer weights and fits, so the plan takes it."""
    plans, shape = _plans(20480)
    assert not plans["ddp"].fits and plans["fsdp"].fits
    assert pick_strategy(plans).strategy == "fsdp"
    # The weights follow from the shape: DDP holds every 4-bit layer, FSDP half of them plus two whole ones.
    nf4 = quantized_bytes_per_param(4, True, 2)
    layers = shape.quantized_params * nf4
    root = (shape.embedding_params + shape.head_params + shape.other_params) * 2
    assert plans["ddp"].estimate.weights == pytest.approx(layers + root, rel=1e-6)
    assert shape.quantized_params == 80 * (8192 * (2 * 8192 + 2 * 1024) + 3 * 8192 * 28672)
    assert plans["fsdp"].estimate.weights == pytest.approx(layers / 2 + 2 * layers / 80 + 1.5 * root, rel=1e-3)
    # Rank 0 loads the whole 4-bit model onto its GPU before sharding (the others receive their shards).
    assert plans["fsdp"].load == pytest.approx(layers + root, rel=0.05)
    # checkpoint_offload auto (the default) moves DDP's 80 layer inputs (25 GiB at 20k tokens) to host memory,
    # so DDP fits; FSDP does not offload (auto stays off with it) and keeps its estimate.
    auto, _ = _plans(20480, offload="auto")
    assert auto["ddp"].fits and pick_strategy(auto).strategy == "ddp"
    assert plans["ddp"].estimate.checkpoints - auto["ddp"].estimate.checkpoints == 78 * 20480 * 8192 * 2
    assert auto["fsdp"].estimate.total == plans["fsdp"].estimate.total


def test_70b_on_two_80gb_cards_short_rows_take_ddp():
    """At 2k-token rows the 4-bit 70B fits each card whole: DDP (no per-layer all-gathers) is the choice."""
    plans, _ = _plans(2048)
    assert plans["ddp"].fits and plans["fsdp"].fits
    assert pick_strategy(plans).strategy == "ddp"
    assert plans["fsdp"].estimate.total < plans["ddp"].estimate.total


def test_fsdp_shards_lora_state_and_ddp_adds_the_allreduce_buffer():
    config = _config(2048)
    shape = shape_from_config(known_config("meta-llama/Llama-3.1-8B"))
    s = setup_for(config, BF16, full_rows(config), 1, True, shape)
    one, ddp, fsdp = (per_gpu_estimate(shape, s, n, st) for n, st in ((1, "ddp"), (4, "ddp"), (4, "fsdp")))
    n_lora = shape.lora_params(16, "all-linear")
    assert ddp.step.total - one.step.total == 4 * n_lora
    # A quarter of the LoRA weights and Adam state, plus two layers' LoRA gathered in bf16.
    assert fsdp.step.adapter == one.step.adapter // 4 + 2 * (n_lora // 32) * 2
    assert ddp.step.checkpoints == fsdp.step.checkpoints  # each rank's own micro-batch either way


def _run_plan(capsys, *argv):
    from kielo.cli import main

    code = main(["plan", *argv])
    return code, capsys.readouterr()


def test_kielo_plan_70b_on_two_gpus_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = _run_plan(
        capsys, "--gpus", "2", "--gpu_memory", "80", "--model", "meta-llama/Llama-3.1-70B", "--data.max_length", "20480"
    )
    assert code == 0, out.err
    assert "80 layers, hidden 8192" in out.out
    # checkpoint_offload auto puts DDP's layer inputs in host memory, and the plan says how much that pins
    assert "choice: ddp fits on 2 x 80 GiB" in out.out and "pinned host memory" in out.out
    argv = ("--gpus", "2", "--gpu_memory", "80", "--model", "meta-llama/Llama-3.1-70B", "--data.max_length", "20480")
    code, out = _run_plan(capsys, *argv, "--training.checkpoint_offload", "off")
    assert code == 0, out.err
    assert "choice: fsdp fits on 2 x 80 GiB" in out.out and "--training.distributed fsdp" in out.out
    code, out = _run_plan(capsys, "--gpus", "2", "--gpu_memory", "24", "--model", "meta-llama/Llama-3.1-70B")
    assert code == 1 and "does not fit" in out.out  # loading puts the whole 4-bit model (37 GiB) on each card


def test_kielo_plan_unknown_hub_id_offline_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, out = _run_plan(capsys, "--gpus", "2", "--gpu_memory", "80", "--model", "someone/unknown-model")
    assert code == 2
    assert "someone/unknown-model" in out.err and "meta-llama/Llama-3.1-70B" in out.err  # the known ids are named


def test_checkpoint_offload_is_refused_with_fsdp():
    with pytest.raises(KieloError, match="checkpoint_offload"):
        from_dict({"training": {"distributed": "fsdp", "checkpoint_offload": True}})
