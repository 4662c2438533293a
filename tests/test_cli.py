"""The CLI: dispatch, overrides, clear errors without tracebacks, --debug."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROWS

from kielo.cli import main, parse_overrides
from kielo.errors import KieloError


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "kielo", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_parse_overrides():
    assert parse_overrides(["--lora.r", "8", "--training.max_steps=20", "--model", "x"]) == {
        "lora.r": "8",
        "training.max_steps": "20",
        "model": "x",
    }
    with pytest.raises(KieloError, match="needs a value"):
        parse_overrides(["--lora.r"])


def test_bad_config_is_one_message_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  rank: 8\n")
    r = run_cli("train", str(cfg))
    assert r.returncode == 2
    assert "unknown key `lora.rank`" in r.stderr and "did you mean `lora.r`" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("train", str(cfg), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bad_data_names_file_and_line(tiny_llama, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    code = main(["train", "--model", str(tiny_llama), "--data.train", str(data), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{data}:2: missing field(s) output" in err and "fix:" in err


def test_missing_model_path_is_clear(tmp_path, capsys):
    code = main(["train", "--model", str(tmp_path / "nope"), "--data.train", "x.jsonl"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_unknown_flag_suggests(capsys):
    assert main(["train", "--lora.rnk", "8"]) == 2
    assert "did you mean `lora.r`" in capsys.readouterr().err


def test_train_through_the_cli(tiny_llama, tmp_path):
    import json

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 3))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model:\n  name: {tiny_llama}\ndata:\n  train: {data}\n  validation_split: 0.2\n"
        "lora:\n  r: 4\ntraining:\n  max_steps: 1\n  micro_batch_size: 2\n"
    )
    r = run_cli("train", str(cfg), "--training.max_steps", "2", "--output_dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 2
    saved = (tmp_path / "out" / "kielo_config.yaml").read_text()
    assert "max_steps: 2" in saved and "r: 4" in saved


def test_the_parser_does_not_load_torch():
    """`kielo --help` stays fast: building the parser imports no command's heavy dependencies."""
    import subprocess
    import sys

    code = "import sys, kielo.cli; kielo.cli.make_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
