"""What survives what: `kielo train` killed with SIGKILL at every named moment and resumed ends bit for bit
where the uninterrupted run ends; SIGTERM stops at a step boundary; a second run into a busy folder is
refused; a full disk is one message and the previous checkpoint stays."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from conftest import ROWS
from fault_harness import kielo, start, train_records
from safetensors.torch import load_file

from kielo.runs.folder import FINAL_TMP, STATE_FILE, checkpoints_dir, list_checkpoints
from kielo.train.faults import POINTS


def write_config(tmp_path, model, data=None, **training):
    import yaml

    extra_data = data
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4), encoding="utf-8")
    cfg = {
        "model": {"name": str(model)},
        "quantization": {"bits": 4},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": str(data), "validation_split": 0.25, "max_length": 128} | (extra_data or {}),
        "training": {"max_steps": 6, "micro_batch_size": 2, "learning_rate": 1e-2, "seed": 1, "save_every": 1, "keep_last": 2}
        | training,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def adapter(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_run(out, ref):
    """Bit-identical adapter, one train record per step with the reference's losses, nothing left over."""
    a, b = adapter(out), adapter(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    got, want = train_records(out), train_records(ref)
    assert [(r["split"], r["step"], r["loss"]) for r in got] == [(r["split"], r["step"], r["loss"]) for r in want]
    steps = [r["step"] for r in got if r["split"] == "train"]
    assert steps == list(range(1, len(steps) + 1))
    root = checkpoints_dir(out)
    left = sorted(p.name for p in root.iterdir())
    assert all(n.startswith("step-") and (root / n / STATE_FILE).is_file() for n in left), left
    assert not (out / FINAL_TMP).exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == steps[-1]


def run_chain(tmp_path, cfg, ref, faults):
    """Kill a run at each fault in turn, each time going on (``--resume`` when a checkpoint exists), then
    finish; returns the output folder."""
    out = tmp_path / "killed"
    logs = []
    for i, fault in enumerate(faults):
        resume = ["--resume"] if list_checkpoints(out) else []
        r = kielo(["train", str(cfg), "--output_dir", str(out), *resume], tmp_path / f"log{i}.txt", fault)
        assert r.code == -signal.SIGKILL, f"{fault}: exit {r.code}, never reached?\n{r.log[-3000:]}"
        logs.append(r.log)
    r = kielo(["train", str(cfg), "--output_dir", str(out), "--resume"], tmp_path / "last.txt")
    assert r.code == 0, r.log[-3000:]
    assert any("removed what an interrupted run left" in log for log in logs + [r.log])
    assert_same_run(out, ref)
    return out


@pytest.mark.slow
def test_kill_at_every_moment_then_resume_is_bit_identical(tiny_llama, tmp_path):
    """Padded batches, LoRA dropout 0.1, validation every 2 steps; twelve processes killed, one per moment."""
    cfg = write_config(tmp_path, tiny_llama, eval_every=2)
    ref = tmp_path / "ref"
    assert kielo(["train", str(cfg), "--output_dir", str(ref)], tmp_path / "ref.txt").code == 0
    assert any(v.abs().max() > 0 for k, v in adapter(ref).items() if "lora_B" in k)  # training moved it
    faults = [
        "data",  # nothing written yet: the next run starts afresh
        "step@1",  # the first step
        "checkpoint-adapter",
        "checkpoint-state",  # the state file half written
        "checkpoint-rename",
        "checkpoint-renamed",  # step-1 in place: from here on --resume
        "checkpoint-side-files",
        "prune",  # step-1 half removed
        "between-steps@2",
        "evaluate",  # the final validation pass
        "final-save",  # some final files moved in, not all
        "summary",
    ]
    assert len({f.split("@")[0] for f in faults}) == len(POINTS) == 12
    run_chain(tmp_path, cfg, ref, faults)


@pytest.mark.slow
def test_kill_with_packing_and_accumulation_then_resume_is_bit_identical(tiny_llama, tmp_path):
    cfg = write_config(tmp_path, tiny_llama, data={"packing": True}, max_steps=4, gradient_accumulation=2)
    ref = tmp_path / "ref"
    assert kielo(["train", str(cfg), "--output_dir", str(ref)], tmp_path / "ref.txt").code == 0
    run_chain(tmp_path, cfg, ref, ["between-steps@1", "checkpoint-state", "prune"])


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_boundary_and_a_second_run_is_refused(tiny_llama, tmp_path):
    """Run 1 pauses after step 1 holding the folder; run 2 into it is refused; SIGTERM to run 1 makes it
    checkpoint step 1 (save_every 0: no checkpoint otherwise), exit 0 and say how to resume."""
    cfg = write_config(tmp_path, tiny_llama, max_steps=3, save_every=0)
    ref = tmp_path / "ref"
    assert kielo(["train", str(cfg), "--output_dir", str(ref)], tmp_path / "ref.txt").code == 0
    out = tmp_path / "run"
    log1 = tmp_path / "log1.txt"
    first = start(["train", str(cfg), "--output_dir", str(out)], log1, "between-steps@1:pause")
    deadline = time.monotonic() + 240
    while "paused at between-steps" not in (log1.read_text() if log1.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    second = kielo(["train", str(cfg), "--output_dir", str(out)], tmp_path / "log2.txt")
    assert second.code == 2 and "in use by another `kielo train` (pid" in second.log and "Traceback" not in second.log
    os.kill(first.pid, signal.SIGTERM)
    first.join(240)
    text = log1.read_text()
    assert first.exitcode == 0, text[-3000:]
    assert "SIGTERM: stopped at step 1 of 3" in text and "--resume" in text
    # the run ends with a short table saying how to go on, not a JSON dump
    assert "at step" in text and "1 of 3" in text and f"--output_dir {out} --resume" in text and '"stopped":' not in text
    assert [p.name for p in list_checkpoints(out)] == ["step-1"]
    assert not (out / "summary.json").exists()
    r = kielo(["train", str(cfg), "--output_dir", str(out), "--resume"], tmp_path / "log3.txt")
    assert r.code == 0, r.log[-3000:]
    assert_same_run(out, ref)
