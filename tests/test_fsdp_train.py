"""`kielo train` with training.distributed fsdp on CPU with gloo, 2 processes: the adapter equals a
single-process run's on the same data, it is written in PEFT's format like that run's, and a run killed
mid-checkpoint and resumed ends bit for bit where the uninterrupted one ends."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from fault_harness import kielo, ranks, train_records
from test_faults import adapter, assert_same_run, write_config


def _fsdp_config(tmp_path, model):
    cfg = write_config(tmp_path, model, max_steps=4, gradient_accumulation=2)
    settings = yaml.safe_load(cfg.read_text())
    settings["lora"]["dropout"] = 0.0  # each rank draws its own dropout masks: without dropout the runs can agree
    settings["training"]["distributed"] = "fsdp"
    cfg.write_text(yaml.safe_dump(settings))
    return cfg


def _args(cfg, out) -> list[str]:
    return ["train", str(cfg), "--output_dir", str(out), "--training.device", "cpu"]


def test_fsdp_run_equals_single_process_and_resumes_exactly(tiny_llama, tmp_path):
    cfg = _fsdp_config(tmp_path, tiny_llama)
    ref, single, out = tmp_path / "ref", tmp_path / "single", tmp_path / "out"
    runs = ranks(_args(cfg, ref), 2, tmp_path)
    assert [r.code for r in runs] == [0, 0], runs[0].log[-3000:] + runs[1].log[-3000:]
    assert "FSDP2: 2 decoder layers sharded over 2 ranks" in runs[0].log
    # Rank 0 read the weights; rank 1 built the model on the meta device and received its shards
    # (tests/test_fsdp_load.py shows it held no weights before sharding).
    assert "the weights rank 0 read were sent to the shards of 2 ranks" in runs[0].log
    one = kielo(_args(cfg, single), tmp_path / "single.log")
    assert one.code == 0, one.log[-3000:]

    # The same files as a single-process run (PEFT's adapter format included), and the same adapter.
    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "tensorboard" not in p.parts)

    assert files(ref) == files(single)
    assert json.loads((ref / "adapter_config.json").read_text()) == json.loads((single / "adapter_config.json").read_text())
    got, want = adapter(ref), adapter(single)
    start = adapter(single / "checkpoints" / "step-2")
    assert got.keys() == want.keys() and len(want) == 2 * 7 * 2
    # Training moved the adapter (B starts at zero), so agreement is not agreement of two untouched starts.
    assert max(float(want[k].abs().max()) for k in want if "lora_B" in k) > 1e-3
    # fp32 on both sides; the ranks' gradient shards are summed by reduce-scatter in another order than one
    # process accumulates them (about 1e-7 relative), and Adam's division by sqrt(v) can amplify that for
    # near-zero gradients, so the weights after 4 steps at lr 1e-2 agree to 1e-5, far below the step's own
    # movement (B moved by more than 1e-3 from zero).
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(start[k], want[k]) for k in want)
    # Adam hardly sees a gradient's scale, so the weights alone would not show a mean where the step's sum
    # belongs: the logged losses and gradient norms do.
    got_steps, want_steps = ([(r["loss"], r["grad_norm"]) for r in train_records(d) if r["split"] == "train"] for d in (ref, single))
    assert len(got_steps) == 4
    for (loss, norm), (want_loss, want_norm) in zip(got_steps, want_steps, strict=True):
        assert loss == pytest.approx(want_loss, rel=1e-5) and norm == pytest.approx(want_norm, rel=1e-4)

    # Killed on rank 0 halfway through step-2's state file, then resumed on 2 ranks: bit for bit the same run.
    killed = ranks(_args(cfg, out), 2, tmp_path, fault="checkpoint-state@2")
    assert killed[0].code == -9
    resumed = ranks(_args(cfg, out) + ["--resume"], 2, tmp_path)
    assert [r.code for r in resumed] == [0, 0], resumed[0].log[-3000:]
    assert "resumed from" in resumed[0].log
    assert_same_run(out, ref)
    state = torch.load(ref / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    # The optimizer state was gathered whole: every LoRA parameter's moments, by name.
    assert len(state["optimizer"]["state"]) == len(want)
    assert json.loads((ref / "summary.json").read_text())["distributed"] == "fsdp"
