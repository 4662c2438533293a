"""Divergence stops (or skips) with the step named and keeps the last good checkpoint; a full disk is one
message and the previous checkpoint stays; the run folder's lock and what a folder holds."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from kielo.cli import main
from kielo.config.load import save_config
from kielo.errors import KieloError
from kielo.runs.folder import checkpoints_dir, list_checkpoints
from kielo.runs.lock import LOCK_FILE, run_lock
from kielo.train import checkpoint as ckpt
from kielo.train.trainer import train


def names(out):
    return [p.name for p in list_checkpoints(out)]


@pytest.mark.parametrize(
    ("lr", "says"),
    [("1e30", "diverged at step 2: loss nan, gradient norm nan: not finite"), ("1e6", "diverged at step 2: loss 5.99")],
)
def test_huge_learning_rate_stops_with_the_step_named(tiny_llama, data_file, tmp_path, capsys, lr, says):
    """1e30 turns the loss NaN; 1e6 saturates the model (loss ln(400) = 5.99, gradient norm 0, no NaN)."""
    save_config(tiny_config(tiny_llama, data_file, tmp_path / "unused"), tmp_path)
    code = main(["train", str(tmp_path / "kielo_config.yaml"), "--output_dir", str(tmp_path / "o"), "--training.learning_rate", lr])
    err = capsys.readouterr().err
    assert code == 2 and says in err and f"it was {float(lr):g}" in err and "Traceback" not in err
    if lr == "1e6":
        assert "ln(vocabulary 400)" in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_a_bad_update_never_rotates_the_last_good_checkpoint_away(tiny_llama, data_file, tmp_path, monkeypatch):
    """Step 3's update poisons a weight: checkpoint 3 is bad, step 4's loss shows it. keep_last 1 alone would
    keep only step-3; step-2, the last one written before the divergence, survives."""
    monkeypatch.setenv("KIELO_FAULT", "step@3:poison")
    out = tmp_path / "o"
    cfg = tiny_config(tiny_llama, data_file, out, training={"max_steps": 6, "save_every": 1, "keep_last": 1})
    with pytest.raises(KieloError, match=r"diverged at step 4: loss nan.*last good checkpoint is .*step-2") as e:
        train(cfg, progress=False)
    assert "learning_rate" in e.value.fix
    assert names(out) == ["step-2", "step-3"]
    good = load_file(str(checkpoints_dir(out) / "step-2" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in good.values())


def test_skip_leaves_the_weights_of_a_bad_step_alone(tiny_llama, data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KIELO_FAULT", "step@2:nan")
    out = tmp_path / "o"
    cfg = tiny_config(tiny_llama, data_file, out, training={"max_steps": 4, "save_every": 1, "keep_last": 5, "on_divergence": "skip"})
    summary = train(cfg, progress=False)
    assert summary["skipped_steps"] == [2]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in records if r["split"] == "train"] == [False, True, False, False]
    step = [load_file(str(checkpoints_dir(out) / f"step-{i}" / "adapter_model.safetensors")) for i in (1, 2, 3)]
    assert all(torch.equal(step[0][k], step[1][k]) for k in step[0])  # step 2 changed nothing
    assert not all(torch.equal(step[1][k], step[2][k]) for k in step[1])  # step 3 trained again
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "adapter_model.safetensors")).values())
    # A finished run is neither resumed nor overwritten; the message says how to train longer.
    for resume in (True, False):
        with pytest.raises(KieloError, match="holds a finished training run .4 steps.") as e:
            train(cfg, resume=resume, progress=False)
        assert "--training.max_steps" in e.value.fix and "another --output_dir" in e.value.fix


@pytest.mark.parametrize(("action", "says"), [("enospc", "the disk is full"), ("erofs", "the folder is not writable")])
def test_a_failed_checkpoint_write_is_one_message_and_the_previous_stays(tiny_llama, data_file, tmp_path, monkeypatch, action, says):
    monkeypatch.setenv("KIELO_FAULT", f"checkpoint-state@2:{action}")
    out = tmp_path / "o"
    cfg = tiny_config(tiny_llama, data_file, out, training={"max_steps": 4, "save_every": 1})
    with pytest.raises(KieloError) as e:
        train(cfg, progress=False)
    msg = e.value.message
    assert f"could not write checkpoint step-2 to {checkpoints_dir(out)}: {says}" in msg
    assert "free)" in msg and "the previous checkpoint (step-1) is intact" in msg
    assert sorted(p.name for p in checkpoints_dir(out).iterdir()) == ["step-1"]  # no temporary folder left
    assert ckpt.load_state(checkpoints_dir(out) / "step-1")["step"] == 1
    monkeypatch.delenv("KIELO_FAULT")
    assert train(cfg, resume=True, progress=False)["steps"] == 4


def test_a_held_lock_refuses_a_second_run_and_a_dead_holders_lock_does_not(tiny_llama, data_file, tmp_path, caplog):
    out = tmp_path / "o"
    cfg = tiny_config(tiny_llama, data_file, out, training={"max_steps": 1})
    with run_lock(out):  # another run holds the folder
        with pytest.raises(KieloError, match=rf"in use by another `kielo train` \(pid \d+ on {socket.gethostname()}"):
            train(cfg, progress=False)
    assert not out.exists()  # released: the lock file went, and the folder the lock made with it
    dead = subprocess.Popen(["true"])
    dead.wait()
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    with caplog.at_level("INFO", logger="kielo"):
        assert train(cfg, progress=False)["steps"] == 1
    assert f"the lock of pid {dead.pid}" in caplog.text and "taking it over" in caplog.text
    assert not (out / LOCK_FILE).exists()


def test_a_preference_objectives_loss_jump_is_no_divergence_but_nan_still_is():
    """DPO's step loss on a misranked pair jumps from ~0 to beta * |margin| in a healthy run (measured: 4.13 from a
    running 0.175 at beta 0.5); the SFT guard calls that a divergence, the preference objective's does not."""
    from kielo.train.guard import DivergenceGuard
    from kielo.train.preference import PreferenceObjective
    from kielo.train.step import SftObjective

    def fed(spikes):
        guard = DivergenceGuard(vocab_size=1000, spikes=spikes)
        for _ in range(30):
            assert guard.check(1, 0.175, 1.0, 1e-4)
        return guard

    assert "jumped from its running value" in fed(True).problem(4.13, 1.0)
    assert fed(False).problem(4.13, 1.0) is None
    assert "not finite" in fed(False).problem(float("nan"), 1.0)
    assert SftObjective(loss=None).loss_spikes and not PreferenceObjective("dpo", 0.1).loss_spikes
