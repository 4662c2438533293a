"""Optional dependencies are checked before any work, and a missing one names the extra that installs it."""

from __future__ import annotations

import json
import sys

from conftest import ROWS

from kielo.cli import main
from kielo.extras import installed


def _data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS), encoding="utf-8")
    return path


def test_a_blocked_module_counts_as_missing(monkeypatch):
    assert installed("json")
    monkeypatch.setitem(sys.modules, "json", None)
    assert not installed("json")


def test_compare_harness_without_lm_eval_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    missing_model = tmp_path / "no-such-model"  # a check after the load would fail on this instead
    args = [
        "--model",
        str(missing_model),
        "--data",
        str(_data(tmp_path)),
        "--harness",
        "finbench_x",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    for command in ("compare", "evaluate"):
        assert main([command, *args]) == 2
        err = capsys.readouterr().err
        assert "--harness (lm-evaluation-harness) needs lm_eval" in err and "pip install 'kielo[harness]'" in err, err
        assert "does not exist" not in err


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1")
    assert (
        main(["train", "--model", str(tmp_path / "no-such-model"), "--data.train", str(data), "--output_dir", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "reading Parquet needs pyarrow" in err and "pip install 'kielo[parquet]'" in err, err


def test_analyze_data_without_matplotlib_skips_the_plots(tiny_llama, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "report"
    rc = main(["analyze-data", str(_data(tmp_path)), "--model", str(tiny_llama), "--output_dir", str(out), "--data.max_length", "64"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Plots: none (matplotlib is not installed: pip install 'kielo[eval]')" in stdout, stdout
    assert any("plots skipped" in r.getMessage() for r in caplog.records)
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["outputs"]["plots"] == [] and (out / "analysis.html").is_file()
    assert not list(out.rglob("*.png"))
