"""`kielo demo --preference` on a tiny model: DPO from the demo's SFT adapter on the bundled preference pairs,
then SFT vs SFT+DPO on the held-out split with the preference pairs, timed apart from the usual stages."""

from __future__ import annotations

import json

import yaml
from safetensors.torch import load_file

from kielo.cli import main
from kielo.demo import PREFERENCE_STAGES
from kielo.demo_preference import DPO_RUN, PREFS_TEST, recipe
from kielo.resources import RESOURCES

USUAL = {"analyze-data", "train", "compare", "prompt-suite", "merge"}


def lora_weights(folder):
    return {k: w for k, w in load_file(folder / "adapter_model.safetensors").items() if "lora_" in k}


def test_demo_preference_trains_dpo_from_the_sft_adapter_and_compares_both(tiny_llama, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_llama), "--training.max_steps", "2", "--generate", "2", "--generation.max_new_tokens", "4"]
    assert main([*args, "--preference", "--training.learning_rate", "5e-3", "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s["seconds"] for s in report["stages"]}
    assert set(stages) == USUAL | set(PREFERENCE_STAGES)
    results = report["results"]
    # The usual total leaves the preference stages out; they have their own.
    assert results["preference_seconds"] >= sum(stages[s] for s in PREFERENCE_STAGES)
    assert results["total_seconds"] < sum(stages.values())

    # DPO started from the SFT adapter, with it as the reference; keys given on the command line won over the
    # recipe (2 steps, lr 5e-3), the recipe's others were kept.
    sft, dpo = out / "tuned", out / DPO_RUN
    saved = yaml.safe_load((dpo / "kielo_config.yaml").read_text())
    assert saved["lora"]["init_from"] == str(sft) and saved["training"]["objective"] == "dpo"
    assert saved["training"]["max_steps"] == 2 and saved["training"]["learning_rate"] == 5e-3
    assert saved["training"]["beta"] == recipe()["beta"] and saved["data"]["packing"] is False
    assert (dpo / "reference_logps.pt").is_file()
    a, b = lora_weights(sft), lora_weights(dpo)
    assert a.keys() == b.keys() and any((a[k] - b[k]).abs().max() > 0 for k in a), "DPO must move the SFT adapter"
    assert sum(1 for _ in open(out / "dpo-data" / "train.jsonl", encoding="utf-8")) == 2 * 2  # steps x pairs per step

    # SFT vs SFT+DPO on the held-out pairs: every model, with intervals, and the paired difference.
    table = results["dpo-compare"]["table"]
    assert list(table["models"]) == ["base", "tuned", DPO_RUN]
    held_out_pairs = sum(1 for line in open(RESOURCES / PREFS_TEST, encoding="utf-8") if line.strip())
    assert 0 < table["pairs"] <= held_out_pairs
    assert table["models"]["base"]["accuracy"]["value"] == 0.5
    diff = table["difference"]
    assert diff["of"] == f"{DPO_RUN} - tuned" and diff["accuracy"] is not None and diff["loss"] is not None
    assert diff["margin"]["low"] <= diff["margin"]["delta"] <= diff["margin"]["high"]
    md = (out / "report.md").read_text()
    assert "Preference stages (timed apart from the usual stages)" in md and f"| {DPO_RUN} - tuned |" in md
    assert (out / "compare-dpo" / "report.html").is_file() and (out / "train-dpo" / "report.html").is_file()
    assert "dpo-compare: [compare-dpo/report.html]" in md
