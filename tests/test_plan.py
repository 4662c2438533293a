"""Memory planner: model shapes read from configs, the peak estimate against measured GPU peaks, the plan's
choices, and `kielo plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kielo.model.precision import Precision
from kielo.plan.memory import GIB, Setup, estimate, quantized_bytes_per_param
from kielo.plan.planner import DataSize, candidates, check_plan, make_plan
from kielo.plan.shape import shape_from_config

ROOT = Path(__file__).resolve().parent.parent


def _config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma", "tiny_bloom"])
def test_shape_counts_the_real_models_parameters(fixture, request):
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    shape = shape_from_config(_config(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
    layers = shape.n_layers
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
    )
    assert shape.quantized_params == linear
    assert layers == model.config.num_hidden_layers
    total = sum(p.numel() for p in model.parameters())  # shared (tied) weights counted once
    assert shape.quantized_params + shape.embedding_params + shape.head_params + shape.other_params == total
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (shape.head_params == 0) == tied


def test_weights_estimate_matches_a_loaded_4bit_model(tiny_llama, tmp_path):
    """The weight bytes of a real NF4 model (packed weights, absmax, double-quant state) as estimated."""
    from bitsandbytes.nn import Linear4bit

    from kielo.model.load import load_base_model
    from kielo.model.source import ModelSource
    from tests.conftest import tiny_config

    config = tiny_config(tiny_llama, tmp_path / "d.jsonl", tmp_path / "out")
    model = load_base_model(ModelSource(str(tiny_llama)), config, torch.device("cpu"))
    quantized = 0
    for m in model.modules():
        if isinstance(m, Linear4bit):
            qs = m.weight.quant_state
            quantized += m.weight.numel() * m.weight.element_size() + qs.absmax.numel() * qs.absmax.element_size()
            quantized += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    shape = shape_from_config(model.config)
    per_param = quantized_bytes_per_param(4, True, 4)
    # Block scales round up per 64-block and per 256 of them: tiny matrices pay a little more than large ones.
    assert quantized == pytest.approx(shape.quantized_params * per_param, rel=0.05)
    unquantized = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if p.dtype == torch.float32)
    est = estimate(shape, Setup(stream_bytes=4))
    assert est.weights == pytest.approx(quantized + unquantized, rel=0.05)
    # and a wrong dtype for the stream would be visibly off
    assert estimate(shape, Setup(stream_bytes=2)).weights < 0.8 * (quantized + unquantized)


def _measured_cases() -> list[tuple[str, dict]]:
    """Every benchmark result that recorded the planner's inputs beside its measured peak."""
    out = []
    for f in sorted((ROOT / "bench" / "results").glob("*.json")):
        data = json.loads(f.read_text())
        for r in data["results"]:
            if "plan_setup" in r and r.get("peak_gib"):
                out.append((data["meta"]["shape"], r))
    return out


def _shape(name: str):
    import transformers

    from kielo.bench.shapes import SHAPES

    spec = dict(SHAPES[name])
    arch = spec.pop("arch", "llama")
    cls = {"llama": "LlamaConfig", "gemma3": "Gemma3TextConfig", "bloom": "BloomConfig"}[arch]
    return shape_from_config(getattr(transformers, cls)(**spec))


CASES = _measured_cases()


@pytest.mark.skipif(not CASES, reason="no benchmark results with planner inputs")
def test_estimates_within_ten_percent_of_measured_gpu_peaks():
    """bench/results/*.json: peaks measured on an H100 (torch.cuda.max_memory_allocated) for the benchmark
    shapes, each case's planner inputs recorded; the estimate recomputed here must be within +-10%."""
    shapes = {}
    errors = []
    for shape_name, r in CASES:
        shape = shapes.setdefault(shape_name, _shape(shape_name))
        est = estimate(shape, Setup(**r["plan_setup"])).total / GIB
        errors.append((abs(est / r["peak_gib"] - 1), shape_name, r["variant"], r["case"], est, r["peak_gib"]))
    worst = max(errors)
    assert worst[0] <= 0.10, f"estimate {worst[4]:.2f} vs measured {worst[5]:.2f} GiB: {worst[1:4]}"


LLAMA8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
)


def _plan_config(**training):
    from kielo.config.load import from_dict

    return from_dict(
        {
            "data": {"max_length": 2048, "packing": True},
            "lora": {"dropout": 0.0},
            # layer inputs kept on the GPU: these budgets were chosen for that (auto offload: tests/test_offload.py)
            "training": {"micro_batch_size": 4, "gradient_accumulation": 2, "checkpoint_offload": "off", **training},
        }
    )


def _llama_shape():
    from transformers import LlamaConfig

    return shape_from_config(LlamaConfig(**LLAMA8B))


def test_fit_keeps_a_setting_that_fits_and_shrinks_one_that_does_not():
    shape, config = _llama_shape(), _plan_config()
    data = DataSize(2048, 2048, True)
    bf16 = Precision(torch.bfloat16, True)
    roomy = make_plan(config, shape, bf16, data, 80 * GIB, "fit")
    assert (roomy.micro_batch_size, roomy.gradient_accumulation, roomy.changed) == (4, 2, [])
    tight = make_plan(config, shape, bf16, data, 10 * GIB, "fit")
    assert tight.fits and tight.micro_batch_size < 4
    assert tight.micro_batch_size * tight.gradient_accumulation == 8  # same examples per step
    assert tight.estimate.total <= 0.9 * 10 * GIB and "micro_batch_size 4 ->" in tight.changed[0]


def test_fastest_drops_checkpointing_when_memory_allows():
    shape, config = _llama_shape(), _plan_config()
    data = DataSize(2048, 2048, True)
    plan = make_plan(config, shape, Precision(torch.bfloat16, True), data, 140 * GIB, "fastest")
    assert plan.gradient_checkpointing is False and plan.fits and plan.micro_batch_size > 1
    lean = make_plan(config, shape, Precision(torch.bfloat16, True), data, 16 * GIB, "fastest")
    assert lean.gradient_checkpointing is True  # without it nothing fits 16 GiB
    assert lean.micro_batch_size == 8  # the widest micro-batch that fits with it


def test_nothing_fits_is_reported_and_far_over_is_refused():
    from kielo.errors import KieloError

    shape, config = _llama_shape(), _plan_config()
    plan = make_plan(config, shape, Precision(torch.float32, False), DataSize(2048, 2048, True), 4 * GIB, "fit")
    assert not plan.fits and plan.micro_batch_size == 1 and plan.gradient_checkpointing
    with pytest.raises(KieloError, match="GiB of GPU memory"):
        check_plan(plan, "llama8b")
    check_plan(make_plan(config, shape, Precision(torch.float32, False), DataSize(2048, 2048, True), 80 * GIB), "x")


def test_candidates_keep_the_effective_batch():
    config = _plan_config(micro_batch_size=3, gradient_accumulation=4, gradient_checkpointing=False)
    fit = candidates(config, "fit")
    assert fit[0] == (3, False) and all(12 % m == 0 and m <= 3 for m, _ in fit)
    assert (1, True) in fit
    assert candidates(config, "fastest")[0] == (12, False)


def test_resolve_training_plans_nothing_on_cpu_and_keeps_a_resumed_runs_settings(tiny_llama, tmp_path):
    from kielo.model.bundle import load_bundle
    from kielo.train.resolve import resolve_training
    from tests.conftest import tiny_config

    config = tiny_config(tiny_llama, tmp_path / "d.jsonl", tmp_path / "o")
    bundle = load_bundle(config, for_training=True)
    model = bundle.model
    same, plan = resolve_training(bundle, [])
    assert plan is None and same == bundle.config
    t = same.training
    # resolved: nothing left on `auto`, the configured batch settings kept
    assert (t.device, same.quantization.compute_dtype, t.stream_dtype, t.kernels) == ("cpu", "fp32", "compute", "none")
    assert (t.micro_batch_size, t.gradient_accumulation) == (config.training.micro_batch_size, config.training.gradient_accumulation)
    saved = tiny_config(
        tiny_llama,
        tmp_path / "d.jsonl",
        tmp_path / "o",
        training={"micro_batch_size": 1, "gradient_accumulation": 2, "gradient_checkpointing": False},
    )
    resumed, _ = resolve_training(bundle, [], saved)
    assert (resumed.training.micro_batch_size, resumed.training.gradient_accumulation) == (1, 2)
    assert resumed.training.gradient_checkpointing is False
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_kielo_plan_command(tiny_llama, data_file, tmp_path, capsys):
    from kielo.cli import main

    args = ["plan", "--model", str(tiny_llama), "--data.train", str(data_file), "--data.max_length", "128"]
    assert main([*args, "--gpu_memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "memory plan (fit)" in out and "estimated peak" in out and "24 training examples" in out
    big = tmp_path / "big"
    from transformers import LlamaConfig

    LlamaConfig(**LLAMA8B).save_pretrained(big)
    assert main(["plan", "--model", str(big), "--gpu_memory", "6"]) == 1  # an 8B model can't train in 6 GiB
    assert "nothing fits" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert main(["plan", "--model", str(tiny_llama)]) == 2
        assert "--gpu_memory" in capsys.readouterr().err
