"""`kielo compare --preference_data`: held-out preference accuracy, reward margin and log-probabilities of the
base and each adapter (DPO's implicit reward against the base), with intervals and the paired difference between
two adapters, in the terminal, report.md/html and report.json; and the same pairs swapped score the other way."""

from __future__ import annotations

import json

import pytest
from conftest import PAIRS, ROWS, tiny_config

from kielo.cli import main
from kielo.data.pairs import PairLayout
from kielo.data.prepare import prepare_data, read_data
from kielo.model.bundle import load_bundle
from kielo.train.preference import PreferenceObjective

BETA = 0.5


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def swapped(rows):
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """An SFT adapter and a DPO adapter trained on the pairs, and the pair and SFT files."""
    d = tmp_path_factory.mktemp("cmp-pref")
    pairs, sft_data = jsonl(d / "pairs.jsonl", PAIRS * 3), jsonl(d / "sft.jsonl", ROWS * 2)
    common = ["--model", str(tiny_llama), "--lora.r", "4", "--lora.dropout", "0", "--training.device", "cpu"]
    sft = ["train", *common, "--data.train", str(sft_data), "--training.max_steps", "2", "--output_dir", str(d / "sft")]
    assert main(sft) == 0
    dpo = ["train", *common, "--data.train", str(pairs), "--training.objective", "dpo", "--training.beta", str(BETA)]
    dpo += ["--training.max_steps", "6", "--training.micro_batch_size", "2", "--training.learning_rate", "5e-3"]
    assert main([*dpo, "--output_dir", str(d / "dpo")]) == 0
    return d, pairs, sft_data


def compare(tiny_llama, runs, pref_file, out, *extra):
    d, _, sft_data = runs
    argv = ["compare", "--model", str(tiny_llama), "--adapter", str(d / "sft"), "--adapter", str(d / "dpo")]
    argv += ["--data", str(sft_data), "--no_generate", "--bootstrap", "200", "--preference_data", str(pref_file)]
    assert main([*argv, "--output_dir", str(out), "--training.device", "cpu", *extra]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def right(tiny_llama, runs, tmp_path_factory):
    """The comparison on the pairs the DPO adapter was trained on: its report, what it printed, its folder."""
    out = tmp_path_factory.mktemp("right")
    report, printed = compare_printed(tiny_llama, runs, runs[1], out)
    return report, printed, out


def compare_printed(tiny_llama, runs, pref_file, out):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        report = compare(tiny_llama, runs, pref_file, out)
    return report, buffer.getvalue()


def test_dpo_adapter_prefers_the_chosen_answers_and_swapped_pairs_reverse_it(tiny_llama, runs, right, tmp_path):
    from safetensors.torch import load_file

    d = runs[0]
    lora_b = [w for k, w in load_file(d / "dpo" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "training must have moved the DPO adapter"

    report, printed, folder = right
    pref = report["preference"]
    models = pref["models"]
    assert pref["pairs"] == len(PAIRS) * 3 and pref["beta"] == BETA and "DPO run" in pref["beta_from"]
    assert list(models) == ["base", "sft", "dpo"] and pref["baseline"] == "sft"
    # The base against itself: every reward 0, every pair a tie.
    assert models["base"]["accuracy"]["value"] == 0.5 and models["base"]["margin"]["value"] == 0
    dpo = models["dpo"]
    assert dpo["accuracy"]["value"] > 0.5 and dpo["margin"]["value"] > 0
    assert dpo["accuracy"]["low"] <= dpo["accuracy"]["value"] <= dpo["accuracy"]["high"]
    delta = pref["deltas"]["dpo"]["margin"]
    assert delta["delta"] == pytest.approx(dpo["margin"]["value"] - models["sft"]["margin"]["value"], abs=1e-9)
    assert delta["low"] <= delta["delta"] <= delta["high"] and "sft" not in pref["deltas"]
    # The compact summary carries the same numbers; the terminal and both reports show them.
    assert report["summary"]["preference"]["models"]["dpo"]["accuracy"]["value"] == dpo["accuracy"]["value"]
    assert "preference pairs (12, beta 0.5, reference base):" in printed and "dpo - sft: accuracy" in printed
    md, html = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    for page in (md, html):
        assert "Held-out preference pairs: 12 pairs" in page and "Δ dpo − sft [95% CI]" in page
        assert "Preference accuracy by kind of rejected answer" in page and "wrong_number" in page

    wrong = compare(tiny_llama, runs, jsonl(tmp_path / "swapped.jsonl", swapped(PAIRS * 3)), tmp_path / "swapped")["preference"]
    w = wrong["models"]["dpo"]
    assert w["accuracy"]["value"] < 0.5 and w["margin"]["value"] < 0
    assert w["accuracy"]["value"] == pytest.approx(1 - dpo["accuracy"]["value"])
    assert w["margin"]["value"] == pytest.approx(-dpo["margin"]["value"], rel=1e-6)
    assert w["logps_chosen"]["value"] == pytest.approx(dpo["logps_rejected"]["value"], rel=1e-6)


def test_margin_equals_the_training_objectives_validation_metric(tiny_llama, runs, right, tmp_path):
    """compare's per-pair margin is DPO's: the objective's own evaluation (adapter off = the reference) agrees."""
    d, pairs, _ = runs
    report = right[0]
    cfg = tiny_config(tiny_llama, pairs, tmp_path / "o", data={"validation_split": 0.0}, training={"objective": "dpo"})
    bundle = load_bundle(cfg, for_training=False, adapter=str(d / "dpo"))
    items, _, _ = prepare_data(bundle, read_data(cfg))
    layout = PairLayout(items, 4, bundle.tokenizer.pad_token_id, 0, shuffle=False)
    expected = PreferenceObjective("dpo", BETA).evaluate(bundle.model, layout, bundle.device)
    got = report["preference"]["models"]["dpo"]
    assert got["margin"]["value"] == pytest.approx(expected["rewards/margin"], rel=1e-3, abs=1e-4)
    assert got["logps_chosen"]["value"] == pytest.approx(expected["logps/chosen"], rel=1e-3, abs=1e-3)
    assert got["accuracy"]["value"] == pytest.approx(expected["rewards/accuracy"])


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--beta", "0.1"], "--beta is used only with --preference_data"),
        (["--preference_data", "SFT", "--beta", "0"], "--beta 0.0 is not positive"),
        (["--preference_data", "SFT"], "an SFT row (has `output`, no `chosen` or `rejected`)"),
    ],
    ids=["beta-alone", "beta-zero", "sft-rows"],
)
def test_bad_preference_options_fail_before_any_model_loads(extra, expect, tiny_llama, runs, tmp_path, capsys):
    d, _, sft_data = runs
    extra = [str(sft_data) if x == "SFT" else x for x in extra]
    argv = ["compare", "--model", str(tiny_llama), "--adapter", str(d / "dpo"), "--data", str(sft_data), *extra]
    assert main([*argv, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "report.json").exists()
