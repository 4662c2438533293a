"""A short real run on the embedded default model (Gemma 3 270M, real 4-bit NF4 on CPU).

The first use converts the model from its PyPI package into the cache (about two minutes, once).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has a Python API example"
    return blocks[0]


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    """The README's Python example, run as written (from the repo root), on the real default model."""
    monkeypatch.chdir(ROOT)
    code = readme_python_example().replace('"runs/api-example"', repr(str(tmp_path / "api-example")))
    code = code.replace("runs/api-example", str(tmp_path / "api-example"))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    first, last = map(float, out[0].split())
    assert first > 0 and last > 0
    summary = json.loads((tmp_path / "api-example" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu"
    assert os.path.exists(tmp_path / "api-example" / "adapter_model.safetensors")


def test_demo_runs_every_stage_on_the_default_model(tmp_path):
    """`kielo demo` with a tiny budget: analyze-data, train, compare, prompt suite and merge all run."""
    from kielo.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--training.max_steps", "2", "--generate", "4", "--generation.max_new_tokens", "8", "--output_dir", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["analyze-data", "train", "compare", "prompt-suite", "merge"]
    summary = report["results"]["compare"]["summary"]
    assert set(summary["models"]) == {"base", "tuned"}
    assert summary["models"]["tuned"]["loss"] != summary["models"]["base"]["loss"]
    assert (out / "report.md").is_file() and (out / "compare" / "report.html").is_file()
    assert (out / "merged" / "config.json").is_file()
    assert "evidence" in report["results"]
