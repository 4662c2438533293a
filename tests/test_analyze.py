"""`kielo analyze-data`: numbers agree with training, checks catch what they claim to, reports are written."""

from __future__ import annotations

import json
import random
import types
from dataclasses import asdict

import numpy as np
import pytest
from conftest import ROWS, tiny_config

from kielo.analyze import analyze_data, parallel
from kielo.analyze import run as analyze_run
from kielo.analyze.duplicates import dedup_text, signatures, similar_pairs
from kielo.analyze.render import render_example, to_ansi, to_html, token_pieces
from kielo.analyze.tokenizer_efficiency import tokenizer_efficiency
from kielo.cli import main
from kielo.data.batches import BatchLayout, pack_rows, token_counts
from kielo.data.encode import Encoded, Encoder
from kielo.data.records import Example, load_examples
from kielo.data.template import resolve_template
from kielo.errors import KieloError
from kielo.model.load import load_tokenizer


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config_for(model, train, out, **data):
    return tiny_config(model, train, out, data={"validation_split": 0.0, **data})


# Distinct rows with no duplicates, empty fields or long texts: the checks must stay quiet on them.
CLEAN = [
    {"instruction": "Mikä on Suomen pääkaupunki?", "output": "Suomen pääkaupunki on Helsinki.", "answer_lang": "fi"},
    {"instruction": "Kirjoita lyhyt runo syksystä.", "output": "Kissa istuu ikkunalla ja katselee lintuja.", "answer_lang": "fi"},
    {"instruction": "Luettele kolme suomalaista järveä.", "output": "Saimaa, Päijänne ja Inarijärvi.", "answer_lang": "fi"},
    {"instruction": "Selitä, miksi taivas on sininen.", "output": "Auringon valo siroaa ilmakehässä.", "answer_lang": "fi"},
    {
        "messages": [
            {"role": "user", "content": "Paljonko on kaksi plus kolme?"},
            {"role": "assistant", "content": "Viisi."},
            {"role": "user", "content": "Entä neljä kertaa kolme?"},
            {"role": "assistant", "content": "Kaksitoista."},
        ],
        "answer_lang": "fi",
    },
    {"instruction": "Käännä englanniksi.", "input": "Hyvää huomenta!", "output": "Good morning!", "answer_lang": "en"},
]
LEAVES = {
    "instruction": "Kerro lyhyesti, miksi syksyllä lehdet muuttuvat keltaisiksi ja punaisiksi ennen kuin ne putoavat puista maahan.",
    "output": "Lehtivihreä hajoaa syksyllä, jolloin muut väriaineet tulevat näkyviin.",
    "answer_lang": "fi",
}


@pytest.fixture(scope="module")
def tokenizers(tiny_llama, tiny_gemma):
    return {"llama": load_tokenizer(str(tiny_llama)), "gemma": load_tokenizer(str(tiny_gemma))}


# --- the shared data code the analysis relies on -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, mode, train_on_prompt", [("llama", "builtin", False), ("gemma", "chat", False), ("gemma", "builtin", True)]
)
def test_encode_many_is_encode_bit_for_bit(tokenizers, data_file, name, mode, train_on_prompt):
    tok = tokenizers[name]
    enc = Encoder(tok, resolve_template(tok, mode), 48, train_on_prompt=train_on_prompt)
    examples = load_examples(data_file) + [Example([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}])]
    one_by_one = [asdict(enc.encode(ex, 7 + i)) for i, ex in enumerate(examples)]
    assert [asdict(e) for e in enc.encode_many(examples, start_index=7, batch_size=4)] == one_by_one
    # encode_all (now batched) still gives what encode + fit gave.
    kept, st = enc.encode_all(examples)
    expected = [enc.fit(enc.encode(ex, i)) for i, ex in enumerate(examples)]
    assert [asdict(e) for e in kept] == [asdict(e) for e in expected if e is not None]
    assert st.total == len(examples) and st.kept == len(kept)


def test_pack_rows_is_first_fit():
    def first_fit(items, capacity):  # the plain definition: scan rows in order
        rows, room = [], []
        for it in items:
            n = len(it.input_ids)
            for r, free in enumerate(room):
                if n <= free:
                    rows[r].append(it)
                    room[r] -= n
                    break
            else:
                rows.append([it])
                room.append(capacity - n)
        return rows

    rng = random.Random(0)
    for trial in range(200):
        capacity = rng.randint(4, 50)
        top = capacity + 6 if trial % 4 == 0 else capacity  # sometimes longer than a row
        items = [Encoded([1] * rng.randint(1, top), [1], 0, 0, index=i) for i in range(rng.randint(0, 60))]
        assert [[x.index for x in r] for r in pack_rows(items, capacity)] == [[x.index for x in r] for r in first_fit(items, capacity)]


# --- the analysis agrees with what training feeds the model -------------------------------------------------


@pytest.mark.parametrize("packing", [False, True])
def test_token_counts_agree_with_training_batches(tiny_llama, tmp_path, packing):
    from kielo.data.prepare import prepare_data
    from kielo.model.bundle import load_tokenizer_and_template, make_encoder
    from kielo.model.source import resolve_model

    train = write_rows(tmp_path / "train.jsonl", CLEAN + [LEAVES, {**LEAVES, "output": "sana " * 60}])
    config = config_for(tiny_llama, train, tmp_path / "out", max_length=40, packing=packing)
    result = analyze_data([train], config, examples=0)

    # What training does (trainer.train): prepare_data, then the BatchLayout over the training items.
    tok, template = load_tokenizer_and_template(config, resolve_model(config.model.name))
    items, _, report = prepare_data(types.SimpleNamespace(config=config, encoder=make_encoder(tok, template, config)))
    t = config.training
    layout = BatchLayout(items, t.micro_batch_size, tok.pad_token_id, t.seed, config.data.packing, config.data.max_length)
    batches = [layout.batch(i) for i in range(layout.per_epoch)]

    split = result["splits"]["train"]
    assert split["kept"] == len(items) and split["truncated"] == report["train"]["truncated"] > 0
    assert split["tokens_lost"] == report["train"]["tokens_lost"]
    assert split["tokens"] - split["tokens_lost"] == sum(len(it.input_ids) for it in items)
    budget = result["token_budget"]["train"]
    used = budget["modes"][budget["training_uses"]]
    assert budget["training_uses"] == ("packed" if packing else "padded")
    assert used["micro_batches"] == len(batches)
    assert used["slots"] == sum(b.input_ids.numel() for b in batches)
    assert used["trained"] == sum(b.trained_tokens for b in batches) == sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
    assert used["slots"] - used["padding"] == sum(b.real_tokens for b in batches)
    assert used["trained"] + used["masked"] + used["padding"] == used["slots"]


def test_token_counts_match_collated_batches_in_every_mode(tokenizers, data_file):
    tok = tokenizers["gemma"]
    enc = Encoder(tok, resolve_template(tok, "chat"), 64)
    items, _ = enc.encode_all(load_examples(data_file))
    from kielo.analyze.budget import length_grouped
    from kielo.data.batches import collate_packed, collate_padded

    for packing in (False, True):
        groups = BatchLayout(items, 3, tok.pad_token_id, 5, packing=packing, max_length=64).groups(0)
        batches = [collate_packed(g, tok.pad_token_id) if packing else collate_padded(g, tok.pad_token_id) for g in groups]
        assert token_counts(groups, packing) == {
            "slots": sum(b.input_ids.numel() for b in batches),
            "real": sum(b.real_tokens for b in batches),
            "trained": sum(b.trained_tokens for b in batches),
        }
    grouped = length_grouped(items, 3, seed=5)
    assert sorted(it.index for g in grouped for it in g) == [it.index for it in items]
    padded = token_counts(BatchLayout(items, 3, tok.pad_token_id, 5).groups(0), False)
    assert token_counts(grouped, False)["slots"] <= padded["slots"]


# --- the checks find what they claim to, and stay quiet otherwise -------------------------------------------


def test_checks_report_duplicates_empty_fields_overlong_and_leaks(tiny_llama, tmp_path):
    bad = CLEAN + [
        CLEAN[0],  # exact duplicate
        LEAVES,
        {**LEAVES, "instruction": LEAVES["instruction"].replace("punaisiksi", "oransseiksi")},  # near
        {"instruction": "Vastaa tyhjällä.", "output": "   "},  # whitespace-only answer
        {"instruction": "Toista tämä.", "input": "  ", "output": "Toistan."},  # whitespace-only input
        {"instruction": "Kerro tarina.", "output": "Vastaus: kolme omenaa. " * 40},  # truncated
        {"instruction": "Järjestelmä Käyttäjä Vastaus ohje syöte. " * 40, "output": "Luin."},  # prompt fills max_length
        {
            "instruction": "Mikä on Ruotsin pääkaupunki?",
            "output": "The capital of Sweden is Stockholm, a large city.",
            "answer_lang": "fi",
        },  # answer not in its answer_lang
    ]
    train = write_rows(tmp_path / "train.jsonl", bad)
    dev = write_rows(tmp_path / "dev.jsonl", [CLEAN[2], {"instruction": "Uusi kysymys tähän?", "output": "Uusi vastaus."}])
    config = config_for(tiny_llama, train, tmp_path / "out", max_length=160)
    result = analyze_data([train, dev], config, examples=0)
    s = result["splits"]["train"]
    dups = result["duplicates"]["splits"]["train"]
    assert dups["exact"] == 1 and dups["exact_examples"][0]["b"].endswith("train.jsonl:7")
    assert dups["near"] == 1 and dups["near_examples"][0]["a"].endswith("train.jsonl:8")
    assert s["empty_fields"]["examples"] == 2 and s["empty_fields"]["by_field"] == {"assistant": 1, "input": 1}
    assert s["over_max_length"] == 2 and s["truncated"] == 1
    assert s["response_cut_entirely"] == 1 and s["response_cut_entirely_where"][0].endswith("train.jsonl:13")
    assert s["dropped_no_target"] == 1 and s["end_token"]["missing_truncated"] == 1
    assert result["languages"]["train"]["answer_not_in_answer_lang"] == 1
    overlap = result["duplicates"]["overlap"][0]
    assert (overlap["a"], overlap["b"], overlap["exact"], overlap["exact_or_near"]) == ("train", "dev", 1, 1)
    text = "\n".join(result["warnings"])
    for phrase in (
        "1 exact and 1 near duplicate",
        "empty or whitespace-only",
        "answer is cut entirely",
        "longer than data.max_length",
        "also appear in train",
        "answer_lang",
    ):
        assert phrase in text, phrase
    assert result["max_length"]["configured_covers"] < 1


def test_clean_data_raises_no_warnings(tiny_gemma, tmp_path):
    train = write_rows(tmp_path / "train.jsonl", CLEAN)
    dev = write_rows(tmp_path / "dev.jsonl", [LEAVES])
    result = analyze_data([train, dev], config_for(tiny_gemma, train, tmp_path / "out", max_length=256), examples=0)
    assert result["template"] == "chat" and result["end_token"] == "<end_of_turn>"
    assert result["warnings"] == []
    s = result["splits"]["train"]
    assert s["end_token"]["present"] == len(CLEAN) and s["double_bos"] == 0 and s["over_max_length"] == 0
    assert result["duplicates"]["splits"]["train"] == {"exact": 0, "near": 0, "near_examples": [], "exact_examples": []}
    assert result["languages"]["train"]["answer"]["fi"] > 0.5


def test_minhash_finds_near_duplicates_and_only_them():
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzäö") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(150)]
    copies = []
    for t in texts[:50]:  # change one word in ten: Jaccard of 5-grams stays well above 0.5
        w = t.split()
        for i in range(0, len(w), 10):
            w[i] = rng.choice(words)
        copies.append(" ".join(w))
    a, b, jac = similar_pairs(signatures(texts + copies))

    def exact_jaccard(x, y):
        sx, sy = ({t[i : i + 5] for i in range(len(t) - 4)} for t in (x, y))
        return len(sx & sy) / len(sx | sy)

    found = set(zip(a.tolist(), b.tolist(), strict=True))
    assert {(150 + i, i) for i in range(50) if exact_jaccard(texts[i], copies[i]) >= 0.6} <= found
    everything = texts + copies
    assert all(exact_jaccard(everything[x], everything[y]) > 0.35 for x, y in found)
    assert dedup_text(Example([{"role": "user", "content": " A  b\n"}, {"role": "assistant", "content": "C"}])) == "u:a b\na:c"


# --- rendering and tokenizer efficiency ---------------------------------------------------------------------


def test_rendered_examples_show_tokens_trained_span_and_cut(tokenizers, tmp_path):
    tok = tokenizers["llama"]
    text = "Käännä: Hyvää huomenta! äöå € 😀"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert "".join(token_pieces(tok, ids)) == tok.decode(ids)  # multi-byte characters split over tokens too
    enc = Encoder(tok, resolve_template(tok, "builtin"), 20)
    ex = Example(
        [{"role": "user", "content": "Kissa istuu."}, {"role": "assistant", "content": "Good morning! " * 8}], source="d.jsonl:3"
    )
    e = enc.encode(ex)
    rendered = render_example(tok, e.input_ids, e.labels, 20, ex, "train", dropped=False)
    plain = to_ansi(rendered, color=False)
    assert plain.startswith("── train: d.jsonl:3") and "cut by data.max_length" in plain
    assert "### Vastaus:↵\n⟦Good" in plain and "✂" in plain
    assert rendered["tokens"][0]["special"] and not rendered["tokens"][0]["trained"]
    assert "\033[1;32m" in to_ansi(rendered)
    page = to_html(rendered)
    assert 'class="tok trained"' in page and "&lt;bos&gt;" in page


def test_tokenizer_efficiency_counts(tokenizers):
    tok = tokenizers["gemma"]
    texts = ["Kissa istuu ikkunalla.", "Kissa katselee lintuja ikkunalla, kissa."]
    e = tokenizer_efficiency(tok, texts)
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert e["tokens"] == tokens and e["chars_per_token"] == round(sum(map(len, texts)) / tokens, 3)
    assert e["words"] == 8 and e["unique_words"] == 6 and e["tokens_per_word"] >= 1
    top = e["most_fragmented"]
    assert [w["pieces"] for w in top] == sorted((w["pieces"] for w in top), reverse=True)
    assert all(w["split"].replace("|", "") == w["word"] and w["count"] >= 2 for w in top)


def test_parallel_workers_give_the_same_numbers(tiny_llama, tmp_path, monkeypatch):
    train = write_rows(tmp_path / "train.jsonl", ROWS * 3 + CLEAN + [LEAVES])
    config = config_for(tiny_llama, train, tmp_path / "out", max_length=48)
    one = analyze_data([train], config, examples=1, workers=1)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_EXAMPLES", 0)
    monkeypatch.setattr(analyze_run, "CHUNK", 5)
    two = analyze_data([train], config, examples=1, workers=2)
    for key in ("splits", "token_budget", "duplicates", "languages", "tokenizers", "examples", "warnings"):
        assert one[key] == two[key], key


# --- the command ------------------------------------------------------------------------------------------


def test_cli_writes_summary_report_plots_and_json(tiny_llama, tiny_gemma, tmp_path, capsys):
    train = write_rows(tmp_path / "train.jsonl", CLEAN + [LEAVES])
    dev = write_rows(tmp_path / "dev.jsonl", [CLEAN[1]])
    out = tmp_path / "report"
    rc = main(
        [
            "analyze-data",
            str(train),
            str(dev),
            "--model",
            str(tiny_llama),
            "--tokenizer",
            str(tiny_gemma),
            "--output_dir",
            str(out),
            "--examples",
            "1",
            "--data.max_length",
            "64",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "── train: " in printed and "⟦" in printed  # rendered examples, no colour when not a terminal
    for title in (
        "Token lengths",
        "What data.max_length=64",
        "Tokens in one epoch",
        "Duplicates",
        "Languages",
        "Tokenizers on Finnish text",
        "Recommendation",
        "Warnings",
        "dev in train",
    ):
        assert title in printed, title
    data = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert list(data["splits"]) == ["train", "dev"] and list(data["tokenizers"]) == [str(tiny_llama), str(tiny_gemma)]
    assert data["duplicates"]["overlap"][0]["exact"] == 1
    assert data["config"]["data"]["max_length"] == 64
    page = (out / "analysis.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 and 'class="tok trained' in page
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["lengths_dev.png", "lengths_train.png", "token_budget.png", "tokenizers.png"]
    assert all((out / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_cli_default_output_dir_and_config_validation(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "train.jsonl", CLEAN)
    write_rows(tmp_path / "held.jsonl", [LEAVES])
    assert (
        main(
            [
                "analyze-data",
                "train.jsonl",
                "--model",
                str(tiny_llama),
                "--examples",
                "0",
                "--data.validation",
                "held.jsonl",
                "--data.overlong",
                "drop",
                "--data.max_length",
                "100",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "runs" / "analyze" / "analysis.json").read_text(encoding="utf-8"))
    assert list(data["splits"]) == ["train", "held"]  # data.validation is analysed as a split too
    assert data["splits"]["held"]["dropped_overlong"] == 1
    assert any("1 dropped (data.overlong=drop)" in w for w in data["warnings"])
    assert "runs/analyze/analysis.html" in capsys.readouterr().out


def test_bad_input_names_file_line_and_tokenizer(tiny_llama, tmp_path, capsys):
    good = write_rows(tmp_path / "good.jsonl", CLEAN)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CLEAN[0]) + '\n{"instruction": "x", \n', encoding="utf-8")
    model = ["--model", str(tiny_llama)]

    assert main(["analyze-data", str(tmp_path / "missing.jsonl"), *model]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert main(["analyze-data", str(good), str(bad), *model]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: malformed JSON" in err and "fix:" in err and "Traceback" not in err

    assert main(["analyze-data", str(good), *model, "--tokenizer", str(tmp_path / "no-such-tokenizer")]) == 2
    err = capsys.readouterr().err
    assert f"--tokenizer {tmp_path / 'no-such-tokenizer'}" in err and "does not exist" in err
    broken = tmp_path / "broken-tok"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(KieloError, match=r"--tokenizer .*broken-tok: cannot load a tokenizer"):
        analyze_data([good], config_for(tiny_llama, good, tmp_path / "o"), tokenizers=[str(broken)])


def test_duplicate_signatures_are_stable_for_empty_and_short_texts():
    sig = signatures(["", "abc", "abcdef", "abcdef"])
    assert sig.shape == (4, 128) and (sig[2] == sig[3]).all()
    a, b, _ = similar_pairs(sig)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(3, 2)]
    assert np.all(sig[0] == sig[1])  # no 5-gram: no signature, never paired


def test_duplicate_counts_within_and_across_splits():
    from kielo.analyze.duplicates import find_duplicates

    def ex(text, where):
        return Example([{"role": "user", "content": text}, {"role": "assistant", "content": "Vastaus tähän."}], source=where)

    long = "Kerro lyhyesti, miksi syksyllä lehdet muuttuvat keltaisiksi ja punaisiksi ennen kuin ne putoavat."
    train = [ex(long, "t:1"), ex("Mikä on Suomen pääkaupunki?", "t:2"), ex(long.replace("lyhyesti", "tarkasti"), "t:3")]
    dev = [ex(long, "d:1"), ex(long, "d:2"), ex("Täysin eri kysymys tähän kohtaan, ei mitään yhteistä.", "d:3")]
    found = find_duplicates(["train", "dev"], [train, dev], [signatures([dedup_text(e) for e in s]) for s in (train, dev)])
    assert {k: (v["exact"], v["near"]) for k, v in found["splits"].items()} == {"train": (0, 1), "dev": (1, 0)}
    assert found["splits"]["dev"]["exact_examples"][0] == {"a": "d:1", "b": "d:2", "text": f"{long} → Vastaus tähän."[:79] + "…"}
    assert (found["overlap"][0]["exact"], found["overlap"][0]["exact_or_near"]) == (2, 2)
