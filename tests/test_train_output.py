"""What `kielo train` shows a person: validation results on their own lines, lr/loss/tokens-per-s in the bar,
and a short summary table at the end instead of a JSON dump (which stays in summary.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROWS


def _rendered_lines(stream: str) -> list[str]:
    """Each output line as a terminal shows it: a carriage return starts the line over."""
    return [line.split("\r")[-1] for line in stream.split("\n")]


def test_train_log_and_summary_table(tiny_llama, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 3), encoding="utf-8")
    out = tmp_path / "out"
    args = ["--model", str(tiny_llama), "--data.train", str(data), "--data.validation_split", "0.2", "--lora.r", "4"]
    args += ["--training.max_steps", "4", "--training.eval_every", "2", "--training.micro_batch_size", "2", "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "kielo", "train", *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())

    # The validation at step 2 falls inside the bar's life: it must start a line of its own, not follow the bar.
    err = _rendered_lines(r.stderr)
    assert any(line.startswith("kielo: step 2 validation loss") for line in err), r.stderr
    assert any(line.startswith("kielo: step 4 validation loss") for line in err), r.stderr
    bar = [line for line in err if line.startswith("train:") and "4/4" in line]
    assert bar and all(k in bar[-1] for k in ("lr=", "loss=", "tok_s=")), r.stderr

    # stdout: the table, no JSON.
    assert "{" not in r.stdout and '"steps"' not in r.stdout
    rows = {line.split("  ")[0]: line for line in r.stdout.splitlines()}
    assert rows["steps"].split()[1] == "4"
    first, last = summary["train_loss_first"], summary["train_loss_last"]
    assert f"{first:.4f} → {last:.4f}" in rows["train loss"]
    v0, v1 = summary["validation_loss_start"], summary["validation_loss_end"]
    assert f"{v0:.4f} → {v1:.4f}" in rows["validation loss"]
    assert f"{summary['tokens_seen']:,}" in rows["tokens trained"]
    assert "GiB" in rows["peak memory"] and "time" in rows
    assert rows["adapter"].endswith(str(out))


def test_summary_table_without_validation():
    from kielo.train.summary import summary_table

    summary = {"steps": 3, "epochs": 1.5, "wall_time_s": 75.2, "train_loss_first": 2.0, "train_loss_last": 1.5}
    summary |= {"validation_loss_start": None, "validation_loss_end": None, "tokens_seen": 1234, "peak_memory_bytes": 0}
    text = summary_table(summary, "runs/x")
    assert "no validation data" in text and "1m 15s" in text and "1,234" in text and "2.0000 → 1.5000" in text
