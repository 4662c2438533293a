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
            "--plan",
            "stock:a,b kielo:a,b",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [(r["variant"], r["case"]) for r in results] == [("stock", "a"), ("stock", "b"), ("kielo", "a"), ("kielo", "b")]
    assert all("error" not in r and r["tok_s"] > 0 for r in results)
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

    from kielo.bench.qlora import init_from, lora_key

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
    with pytest.raises(SystemExit, match="do not pair up"):
        init_from({**own, "base_model.model.layers.1.mlp.up_proj.lora_A.weight": torch.ones(1)}, stock)


def test_unsloth_variant_without_unsloth_says_what_to_install(tmp_path):
    import importlib.util

    import pytest
    import torch

    from kielo.bench.qlora import VARIANTS, load

    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("Unsloth is installed here")
    with pytest.raises(SystemExit, match="the unsloth variant needs Unsloth .*install its wheels"):
        load(VARIANTS["unsloth"], tmp_path, torch.device("cpu"))
