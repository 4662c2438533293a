"""Evaluation metrics, task checks and bootstrap intervals on known values (no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kielo.errors import KieloError
from kielo.evaluate import metrics as m
from kielo.evaluate.adapter_analysis import effective_rank, energy_rank, lora_singular_values
from kielo.evaluate.dataset import expected_language, load_eval_examples, stratified_subset
from kielo.evaluate.scores import score_answer, summarize
from kielo.evaluate.stats import bootstrap_mean, excludes_zero, paired_bootstrap
from kielo.evaluate.tasks import answer_number, bullet_count, is_one_sentence, task_success
from kielo.resources import locate


def test_chrf_and_rouge_l_known_values():
    assert m.chrf("Suomen pääkaupunki on Helsinki.", "Suomen pääkaupunki on Helsinki.") == pytest.approx(100)
    assert m.chrf("xyz", "Suomen pääkaupunki on Helsinki.") < 5
    # LCS("the cat on the mat", "the cat sat on the mat") = 5: P = 5/5, R = 5/6, F1 = 10/11.
    assert m.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert m.rouge_l("Kissa istuu.", "kissa istuu") == pytest.approx(1.0)
    assert m.rouge_l("", "kissa") == 0.0 and m.rouge_l("koira", "kissa") == 0.0


def test_short_answer_metrics():
    assert m.exact_match("  Neutraali. ", "neutraali")
    assert not m.exact_match("neutraali sävy", "neutraali")
    assert m.contains("Sävy on neutraali.", "neutraali")
    assert m.contains("Vastaus on 8.", "8") and not m.contains("Vastaus on 18.", "8")
    assert m.is_short("Good morning!") and not m.is_short("yksi kaksi kolme neljä viisi kuusi")
    assert m.length_ratio("a b c d", "a b") == 2.0 and m.length_ratio("a", "...") is None


def test_repetition_and_distinct_n():
    assert m.repetition("yksi kaksi kolme neljä") == 0.0
    looping = "kissa istuu ikkunalla " * 5
    assert m.repetition(looping) > 0.7
    assert m.distinct_n(["a b", "a b"], 1) == 0.5
    assert m.distinct_n(["a b c"], 2) == 1.0 and m.distinct_n([""], 2) is None


def test_arithmetic_answers_parse_finnish_numbers():
    assert answer_number("Liput maksavat 2 · 14 € = 28 €. Vastaus: 14 €.") == 14
    assert answer_number("Vastaus: 2 640 euroa.") == 2640
    assert answer_number("Vastaus: 3,5 litraa") == 3.5
    assert answer_number("Lämpötila laski arvoon −5 astetta") == -5
    assert answer_number("ei lukuja") is None
    meta = {"task": "arithmetic", "answer": 14}
    assert task_success(meta, "7 + 7 = 14. Vastaus: 14 €.")
    assert not task_success(meta, "Vastaus: 15 €. Tarkistus: 14")  # the marked answer counts, not a later number
    assert task_success(meta, "Se tekee 14 euroa")  # no marker: the last number


def test_label_facts_and_list_checks():
    labels = {"task": "classification", "labels": ["positiivinen", "negatiivinen", "neutraali"]}
    assert task_success(labels, "Neutraali.", "neutraali")
    assert not task_success(labels, "positiivinen", "neutraali")
    assert task_success(labels, "neutraali", "") is None  # no reference: nothing to check against
    facts = {"task": "extraction", "facts": ["2 640 euroa", "leikkipuiston"]}
    assert task_success(facts, "Kertyi 2 640 euroa uuden leikkipuiston rakentamiseen.")
    assert not task_success(facts, "Kertyi 2 640 euroa.")
    lst = {"task": "list"}
    assert task_success(lst, "- Saimaa\n- Päijänne\n- Inari", "1. a\n2. b\n3. c")
    assert not task_success(lst, "- Saimaa\n- Päijänne", "1. a\n2. b\n3. c")
    assert not task_success(lst, "Saimaa, Päijänne ja Inari.", "- a\n- b\n- c")
    assert task_success({"task": "open_qa"}, "mitä tahansa", "viite") is None


def test_format_constraints():
    assert is_one_sentence("Etätyö on työtä kotona, ei toimistolla.")
    assert not is_one_sentence("Etätyö on työtä kotona. Se on yleistä.")
    assert not is_one_sentence("Rivi yksi\nrivi kaksi")
    assert bullet_count("- Maito\n- Hiiva\n- Jauhot\n- Sokeri") == 4
    assert bullet_count("Tarvitset:\n- Maito\n- Hiiva") is None
    bullets = {"task": "format", "constraint": {"type": "bullets", "n": 3}}
    assert task_success(bullets, "- a\n- b\n- c") and not task_success(bullets, "- a\n- b\n- c\n- d")
    number = {"task": "format", "constraint": {"type": "number_only"}}
    assert task_success(number, "1 000") and task_success(number, "8.") and not task_success(number, "8 jalkaa")
    sentence = {"task": "format", "constraint": {"type": "one_sentence"}}
    assert task_success(sentence, "Yksi lause.") and not task_success(sentence, "Kaksi. Lausetta.")


def test_bootstrap_interval_covers_the_true_delta_and_excludes_zero():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 1.0, 300)
    better = base + 0.5 + rng.normal(0.0, 0.5, 300)  # true mean delta 0.5, clear
    ci = paired_bootstrap(base, better, resamples=2000, seed=1)
    assert ci["low"] < 0.5 < ci["high"] and excludes_zero(ci) and ci["p_value"] < 0.01
    same = paired_bootstrap(base, base + rng.normal(0.0, 0.5, 300), resamples=2000, seed=1)  # true delta 0
    assert same["low"] < 0 < same["high"] and not excludes_zero(same)
    # Paired beats unpaired: the spread between examples cancels out of the delta.
    assert ci["high"] - ci["low"] < 0.25
    # Weighted (token-weighted loss): weights pull the mean toward heavy examples.
    w = bootstrap_mean([1.0, 3.0], weights=[3, 1], resamples=200)
    assert w["value"] == pytest.approx(1.5)
    assert paired_bootstrap([1.0], [2.0], seed=0)["delta"] == 1.0 and bootstrap_mean([]) is None


def test_lora_spectrum_without_forming_the_product():
    torch.manual_seed(0)
    a, b = torch.randn(4, 48), torch.randn(40, 4)
    torch.testing.assert_close(lora_singular_values(a, b), torch.linalg.svdvals(b @ a)[:4], rtol=1e-4, atol=1e-4)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    assert energy_rank(torch.tensor([4.0, 1.0, 0.1])) == 1 and energy_rank(torch.tensor([1.0, 1.0])) == 2


def test_data_without_references_and_stratified_subset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"instruction": "Mikä on Suomen pääkaupunki?", "task": "open_qa"},
        {"messages": [{"role": "user", "content": "Hei!"}], "task": "dialogue"},
        {"instruction": "Käännä", "input": "Hyvää huomenta", "output": "", "task": "translation_fi_en"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    examples = load_eval_examples(path)
    assert [e.reference for e in examples] == ["", "", ""]
    assert examples[1].prompt_messages == [{"role": "user", "content": "Hei!"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\n')
    with pytest.raises(KieloError, match=r"bad.jsonl:1: missing field\(s\) instruction"):
        load_eval_examples(bad)
    with pytest.raises(KieloError, match="does not exist"):
        load_eval_examples(tmp_path / "nope.jsonl")
    many = tmp_path / "many.jsonl"
    many.write_text(
        "\n".join(
            json.dumps({"instruction": f"q{i}", "output": "a", "task": t}) for i, t in enumerate(["a"] * 6 + ["b"] * 3 + ["c"] * 1)
        )
    )
    ex = load_eval_examples(many)
    chosen = stratified_subset(ex, 5)
    assert len(chosen) == 5 and {ex[i].meta["task"] for i in chosen} == {"a", "b", "c"}
    assert stratified_subset(ex, None) == list(range(10)) and stratified_subset(ex, 50) == list(range(10))


def test_harness_is_optional_and_its_scores_are_collected(monkeypatch):
    import sys
    import types

    from kielo.evaluate import harness
    from kielo.evaluate.tables import harness_table

    bundle = types.SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None)
    monkeypatch.setattr(harness, "available", lambda: False)
    with pytest.raises(KieloError, match="needs lm-evaluation-harness") as err:
        harness.run_harness(bundle, ["base"], harness.HarnessOptions(["finbench_x"]))
    assert "hub" in err.value.fix and "local files" in err.value.fix
    # A stand-in for lm_eval: kielo's side (one call per model, scores collected, stderr dropped) is what's tested.
    calls = []
    fake = types.ModuleType("lm_eval")
    fake_hf = types.ModuleType("lm_eval.models.huggingface")
    fake_hf.HFLM = lambda pretrained, tokenizer, batch_size: ("lm", pretrained)
    fake.simple_evaluate = lambda model, tasks, limit, task_manager: (
        calls.append((model, tasks, limit)) or {"results": {"finbench_x": {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    )
    for name, module in (
        ("lm_eval", fake),
        ("lm_eval.models", types.ModuleType("lm_eval.models")),
        ("lm_eval.models.huggingface", fake_hf),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(harness, "available", lambda: True)
    out = harness.run_harness(bundle, ["base"], harness.HarnessOptions(["finbench_x"], limit=5))
    assert out["results"] == {"base": {"finbench_x": {"acc": 0.5}}} and calls == [(("lm", bundle.model), ["finbench_x"], 5)]
    assert harness_table(out).rows == [["finbench_x", "acc", "0.5000"]]


def test_paired_wins_losses_and_loss_differences():
    from kielo.evaluate import paired

    def row(i, chrf, success, loss):
        return {
            "id": f"ex{i}",
            "task": "t",
            "prompt": "p",
            "reference": "r",
            "generation": f"answer {i}",
            "chrf": chrf,
            "task_success": success,
            "loss": loss,
            "loss_tokens": 10,
        }

    base = [row(0, 10.0, False, 2.0), row(1, 50.0, True, 2.0), row(2, 20.0, None, 2.0)]
    new = [row(0, 90.0, True, 1.0), row(1, 10.0, False, 2.5), row(2, 20.0, None, 1.5)]
    wl = paired.wins_and_losses(base, new)
    assert [x["id"] for x in wl["wins"]] == ["ex0"] and [x["id"] for x in wl["losses"]] == ["ex1"]
    assert wl["wins"][0]["quality_base"] == pytest.approx(0.05) and wl["wins"][0]["quality_adapter"] == pytest.approx(0.95)
    diffs = paired.loss_differences(base, new)
    assert diffs["n"] == 3 and diffs["mean"] == pytest.approx(-1 / 3) and diffs["improved_share"] == pytest.approx(2 / 3)
    assert diffs["most_worsened"][0]["id"] == "ex1"
    d = paired.deltas(base, new, resamples=200)
    assert d["loss"]["delta"] == pytest.approx(-1 / 3) and d["chrf"]["delta"] == pytest.approx(40 / 3)
    assert d["task_success"]["n"] == 2  # ex2's task has no check


def test_expected_language_comes_from_the_row_or_the_translation_target(tmp_path):
    """An untagged translation-into-English row expects English, so a Finnish answer is not "in the expected
    language"; a row that doesn't tell is left out of the language share instead of assumed Finnish."""
    rows = [
        {
            "instruction": "Käännä.",
            "input": "Hyvää huomenta!",
            "output": "Good morning!",
            "task": "translation_fi_en",
            "answer_lang": "en",
        },
        {"instruction": "Käännä.", "input": "Hyvää huomenta!", "output": "Good morning!", "task": "translation_fi_en"},
        {"instruction": "Käännä seuraava lause englanniksi.", "input": "Hyvää yötä.", "output": "Good night."},
        {"instruction": "Translate into Swedish.", "input": "Kiitos.", "output": "Tack."},
        {"instruction": "Translate this.", "input": "x", "output": "y", "task": "translation", "target_lang": "DE"},
        {"instruction": "Käännä ruotsiksi.", "input": "Puhun englanniksi.", "output": "Jag talar engelska."},  # two targets named
        {"instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki.", "task": "open_qa"},
        {"instruction": "Kerro englanniksi, mikä on kissa.", "output": "A cat is an animal."},  # not a translation
        {"instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki.", "answer_lang": "FI"},
        {"instruction": "Mikä on Japanin pääkaupunki?", "output": "東京", "answer_lang": "ja"},  # a language kielo can't check
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    examples = load_eval_examples(path)
    assert [expected_language(e) for e in examples] == ["en", "en", "en", "sv", "de", None, None, None, "fi", None]

    finnish = "Hyvää huomenta kaikille, tänään on kaunis päivä."
    assert score_answer(examples[1], finnish, 8, True)["expected_language"] is False
    assert score_answer(examples[1], "Good morning, everyone, today is a lovely day.", 8, True)["expected_language"] is True
    assert score_answer(examples[6], finnish, 8, True)["expected_language"] is None
    rows_scored = [{"generation": "x", **score_answer(e, finnish, 8, True)} for e in examples]
    summary = summarize(rows_scored)
    assert summary["counts"]["expected_language"] == 6 and summary["generated"] == 10
    assert summary["metrics"]["expected_language"] == pytest.approx(1 / 6)  # only the tagged Finnish row


def test_bundled_test_split_has_a_known_language_on_every_row():
    """The demo's language share covers the whole held-out split: every bundled row is tagged."""
    examples = load_eval_examples(locate("data/fi_instruct/test.jsonl"))
    langs = [expected_language(e) for e in examples]
    assert None not in langs and langs.count("en") == sum(e.meta["task"] == "translation_fi_en" for e in examples) == 8
