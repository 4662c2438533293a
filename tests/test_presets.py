"""Finnish benchmark presets: `--harness fin-bench` resolves to FIN-bench-v2's lm-eval tasks (cf for a base
model, mcf for an instruction-tuned one) and runs them through the harness; both presets check for the hub
before any model loads. The plumbing runs offline on local task YAMLs named as FIN-bench-v2's tasks."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import build_model, tiny_config

from kielo.evaluate.presets import FIN_BENCH, check_hub, formulation, instruction_tuned, resolve_harness_tasks

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'kielo[harness]')")


def _local_fin_bench(folder, tasks):
    """Task YAMLs with FIN-bench-v2's names over one small local multiple-choice file."""
    data = folder / "fi.jsonl"
    rows = [
        {"question": "Mikä on Suomen pääkaupunki?", "choices": ["Helsinki", "Tukholma"], "answer": 0},
        {"question": "Montako jalkaa kissalla on?", "choices": ["kolme", "neljä"], "answer": 1},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    for task in tasks:
        doc = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc"}],
        }
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return data


def test_fin_bench_preset_runs_its_tasks_from_local_yamls(tiny_llama, data_file, tmp_path, monkeypatch, capsys):
    from kielo.cli import main
    from kielo.train.trainer import train

    run = tmp_path / "run"
    train(tiny_config(tiny_llama, data_file, run, training={"max_steps": 2}), progress=False)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: the local task data must be enough
    include = tmp_path / "tasks"
    include.mkdir()
    _local_fin_bench(include, FIN_BENCH["cf"])
    out, evaluation = tmp_path / "compare", tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"instruction": "Hei", "output": "Moi"}) + "\n")
    code = main(
        ["compare", "--model", str(run), "--data", str(evaluation), "--no_generate", "--bootstrap", "10"]
        + ["--harness", "fin-bench", "--harness_include", str(include), "--harness_limit", "2", "--output_dir", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    h = json.loads((out / "report.json").read_text())["harness"]
    # The tiny tokenizer has no chat template: a base model, so the cloze formulation.
    assert h["preset"] == {"name": "fin-bench", "formulation": "cf"}
    assert len(FIN_BENCH["cf"]) == 12 and len(h["results"]) == 2  # the base and the run's adapter
    for results in h["results"].values():
        assert sorted(results) == sorted(FIN_BENCH["cf"])
        assert all(0.0 <= scores["acc"] <= 1.0 for scores in results.values())


def test_presets_pick_the_formulation_and_name_real_fin_bench_tasks(tmp_path):
    chat = build_model(tmp_path / "chat", "llama", chat=True)
    plain = build_model(tmp_path / "plain", "llama")
    assert instruction_tuned(str(chat)) and not instruction_tuned(str(plain))
    assert formulation("fin-bench", True) == "mcf" and formulation("fin-bench", False) == "cf"
    assert formulation("fin-bench-mcf", False) == "mcf" and formulation("fin-bench-cf", True) == "cf"

    class Bundle:
        class source:
            path = str(chat)

    tasks, form = resolve_harness_tasks(["fin-bench"], Bundle)
    assert form == "mcf" and "belebele_fin_Latn_mcf_fbv2_p0" in tasks and "arc_challenge_fi_mcf_fbv2_p0" in tasks
    assert resolve_harness_tasks(["arc_easy"], Bundle) == (["arc_easy"], None)
    cf = FIN_BENCH["cf"]
    assert {"goldenswag_ht_fi_cf_fbv2_p0", "sib200_fi_cf_fbv2_p0", "ogx_truthfulqax_mc1_fi_fbv2_p0", "squad_fi_gen_fbv2_p0"} <= set(cf)


def test_without_the_hub_presets_fail_in_one_line_before_loading(tiny_llama, tmp_path, monkeypatch, capsys):
    from kielo.cli import main
    from kielo.errors import KieloError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KieloError, match="Hugging Face hub, which can't be reached"):
        check_hub("--harness fin-bench", [FIN_BENCH["cf"]], None)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"instruction": "Hei", "output": "Moi"}) + "\n")
    base = ["compare", "--model", str(tmp_path / "not-loaded"), "--data", str(data), "--output_dir", str(tmp_path / "o")]
    assert main([*base, "--harness", "fin-bench"]) == 2
    err = capsys.readouterr().err
    assert "--harness fin-bench reads its data from the Hugging Face hub" in err and "Traceback" not in err
    assert main([*base, "--euroeval", "fi"]) == 2
    err = capsys.readouterr().err
    assert "euroeval" in err and "Traceback" not in err
    # A local task folder missing one of the preset's tasks still needs the hub.
    include = tmp_path / "tasks"
    include.mkdir()
    _local_fin_bench(include, FIN_BENCH["cf"][:-1])
    with pytest.raises(KieloError, match="hub"):
        check_hub("--harness fin-bench-cf", [FIN_BENCH["cf"]], str(include))
    check_hub("--harness fin-bench-cf", [FIN_BENCH["mcf"], FIN_BENCH["cf"][:-1]], str(include))
