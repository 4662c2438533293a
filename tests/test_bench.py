"""`kielo bench` end to end on CPU (tiny shape): both paths run, their losses and gradients agree, and every
kielo case carries the memory planner's inputs and estimate."""

from __future__ import annotations

import json


def test_kielo_bench_runs_stock_and_kielo_in_one_invocation(tmp_path, capsys):
    from kielo.cli import main

    rc = main(
        [
            "bench",
            "--shape",
            "tiny",
            "--seq",
            "128",
            "--max-length",
            "1024",
            "--examples-per-step",
            "8",
            "--warmup-a",
            "1",
            "--timed-a",
            "1",
            "--warmup-b",
            "1",
            "--timed-b",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            "--cases",
            "stock:a,b kielo:a,b",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [(r["variant"], r["case"]) for r in results] == [("stock", "a"), ("stock", "b"), ("kielo", "a"), ("kielo", "b")]
    assert all("error" not in r and r["tok_s"] > 0 for r in results)
    # The same model FLOPs for every stack on the same data; no GPU, so no measured peak and no MFU.
    assert all(r["model_tflops"] > 0 and r["mfu"] is None for r in results)
    for r in results[2:]:
        # On CPU both paths compute in fp32: the same losses and gradients up to summation order.
        assert r["max_loss_delta"] < 1e-3 and min(r["grad_cosine"]) > 0.999
        assert r["plan_setup"]["tokens"] > 0 and r["planned_gib"] is not None
    stock_b, kielo_b = results[1], results[3]
    # kielo packs several examples into a row, stock pads each pair of examples
    assert kielo_b["micro_batches_per_step"] < stock_b["micro_batches_per_step"]
    assert "vs stock" in capsys.readouterr().out


def test_another_stack_starts_from_stocks_lora_weights():
    """The unsloth variant takes stock's LoRA start by layer and module, whatever the wrappers call them; a
    weight without a partner stops the bench instead of comparing gradients of different starts."""
    import pytest
    import torch

    from kielo.bench.unsloth import init_from, lora_key
    from kielo.errors import KieloError

    stock = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.ones(2, 3),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": torch.zeros(3, 2),
    }
    own = {
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.full((2, 3), 5.0, dtype=torch.bfloat16),
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.full((3, 2), 5.0, dtype=torch.bfloat16),
    }
    assert lora_key(next(iter(own))) == "layers.0.self_attn.q_proj.lora_A"
    got = init_from(own, stock)
    assert got.keys() == own.keys()
    a, b = got.values()
    assert a.dtype == torch.bfloat16 and bool((a == 1).all()) and bool((b == 0).all())
    with pytest.raises(KieloError, match="do not pair up"):
        init_from({**own, "base_model.model.layers.1.mlp.up_proj.lora_A.weight": torch.ones(1)}, stock)


def test_unsloth_variant_without_unsloth_says_what_to_install(tmp_path):
    import importlib.util

    import pytest
    import torch

    from kielo.bench.cases import VARIANTS
    from kielo.bench.models import load
    from kielo.errors import KieloError

    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("Unsloth is installed here")
    with pytest.raises(KieloError, match="the unsloth variant needs Unsloth") as e:
        load(VARIANTS["unsloth"], tmp_path, torch.device("cpu"))
    assert "install its wheels" in e.value.fix


def _research_script():
    """bench/research_variants.py as a module (it is a script of the repository, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "research_variants.py"
    spec = importlib.util.spec_from_file_location("research_variants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_research_variant_runs_through_the_same_driver(tmp_path):
    """A variant and a case option of bench/research_variants.py run in workers started from that script, with
    the bench's data, parity and table: the lean variant's bf16-matmul head and the bf16-attention option each
    change the numbers a little (so they took effect) and stay close to stock."""
    research = _research_script()
    out = tmp_path / "out"
    small = ["--shape", "tiny", "--seq", "128", "--warmup-a", "1", "--timed-a", "1", "--workdir", str(tmp_path / "work")]
    rc = research.bench_main([*small, "--out", str(out), "--cases", "stock:a kielo+lean:a,a/attn=bf16"], registry=research.registry())
    assert rc == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [(r["variant"], r["case"]) for r in results] == [("stock", "a"), ("kielo+lean", "a"), ("kielo+lean", "a/attn=bf16")]
    stock, lean, attn = results
    assert all("error" not in r for r in results)
    assert lean["head"] == "bf16_head_loss_sum" and "planned_gib" not in lean  # the planner does not model lean
    assert attn["attn_bf16"] is True and "attn_bf16" not in lean
    for r in (lean, attn):
        assert 0 < r["max_loss_delta"] < 0.05 and min(r["grad_cosine"]) > 0.99
    assert attn["losses"] != lean["losses"]


def test_plan_mistakes_stop_before_anything_runs(tmp_path, capsys):
    """An unknown variant or case option is a user mistake (exit 2 with the known names), found before a model
    is built; research options are known only to the registry that brings them."""
    import pytest

    from kielo.bench.cases import PRODUCT, parse_cases
    from kielo.cli import main
    from kielo.errors import KieloError

    args = ["bench", "--shape", "tiny", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert main([*args, "--cases", "stock:a kielo+lean:a"]) == 2
    assert "unknown variant 'kielo+lean'" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
    with pytest.raises(KieloError, match="unknown option 'attn=bf16'"):
        parse_cases("kielo:a/attn=bf16", PRODUCT)
    with pytest.raises(KieloError, match="gc= needs a whole number"):
        parse_cases("kielo:a/gc=x", PRODUCT)
    with pytest.raises(KieloError, match="starts from stock's LoRA weights"):
        parse_cases("unsloth:a", PRODUCT)
    research = _research_script().registry()
    (entry,) = parse_cases("kielo+bf16:b/attn=bf16/head=liger", research)
    assert entry.cases[0].fields()["head"] == "liger" and entry.cases[0].fields()["attn_bf16"] is True
    with pytest.raises(KieloError, match="computes its model's own loss"):
        parse_cases("stock:a/head=ckpt", research)
    with pytest.raises(KieloError, match="more than one option chooses the loss head"):
        parse_cases("kielo:a/head=ckpt/headmm=bf16", research)
