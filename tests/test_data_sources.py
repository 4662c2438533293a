"""Data from a save_to_disk folder, a Parquet file with other column names, ShareGPT rows, a hub id without a
network, and streamed training that resumes exactly (offline, tiny models)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import ROWS, tiny_config
from safetensors.torch import load_file

from kielo.config.load import from_dict
from kielo.data.records import load_examples, row_to_example
from kielo.data.sources import ReadOptions, rename_columns
from kielo.errors import KieloError
from kielo.train import checkpoint as ckpt
from kielo.train.trainer import train

datasets = pytest.importorskip("datasets")

QA = [{"question": "Mikä on Suomen pääkaupunki?", "answer": "Helsinki."}, {"question": "Paljonko on 2 + 2?", "answer": "Neljä."}]
MAP = {"question": "instruction", "answer": "output"}


def test_save_to_disk_folder_and_its_splits(tmp_path):
    ds = datasets.Dataset.from_list(QA)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "dd")
    ex = load_examples(tmp_path / "dd", options=ReadOptions(columns=MAP))
    assert [e.messages[-1]["content"] for e in ex] == ["Helsinki.", "Neljä."]
    assert ex[1].source == f"{tmp_path / 'dd'}[train][row 1]"
    test = load_examples(f"{tmp_path / 'dd'}:test", options=ReadOptions(columns=MAP))
    assert [e.messages[0]["content"] for e in test] == ["Paljonko on 2 + 2?"]
    with pytest.raises(KieloError, match=r"has no split `dev` \(it has: train, test\)"):
        load_examples(tmp_path / "dd", options=ReadOptions(split="dev", columns=MAP))
    # Without the column map the rows are not in any style kielo knows: the error names the row and the fix.
    with pytest.raises(KieloError, match=r"dd\[train\]\[row 0\]: missing field\(s\) instruction, output") as e:
        load_examples(tmp_path / "dd")
    assert "data.columns" in e.value.fix


def test_parquet_with_other_column_names(tmp_path):
    path = tmp_path / "qa.parquet"
    datasets.Dataset.from_list(QA).to_parquet(path)
    ex = load_examples(path, options=ReadOptions(columns=MAP))
    assert ex[0].messages == [{"role": "user", "content": QA[0]["question"]}, {"role": "assistant", "content": "Helsinki."}]
    with pytest.raises(KieloError, match=r"qa.parquet\[row 0\]: missing field\(s\) instruction, output") as e:
        load_examples(path, options=ReadOptions(columns={"kysymys": "instruction"}))
    assert "data.columns" in e.value.fix
    # A row already in kielo's names keeps them: `answer` stays a field of its own beside `output`.
    kept = row_to_example(rename_columns({"instruction": "a", "output": "b", "answer": "c"}, MAP), "x:1")
    assert kept.reference == "b" and kept.meta == {"answer": "c"}


def test_columns_key_parses_from_the_command_line():
    cfg = from_dict({"data": {"columns": "{question: instruction, answer: output}"}})
    assert cfg.data.columns == MAP
    with pytest.raises(KieloError, match="data.columns"):
        from_dict({"data": {"columns": "[a, b]"}})


def test_sharegpt_rows_become_chat_messages(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "Vastaa lyhyesti."},
            {"from": "human", "value": "Mikä on Suomen pääkaupunki?"},
            {"from": "gpt", "value": "Helsinki."},
        ],
        "task": "qa",
    }
    ex = row_to_example(row, "x:1")
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"] and ex.reference == "Helsinki."
    assert ex.meta == {"task": "qa"}
    with pytest.raises(KieloError, match="x:1: conversation turn 1 is from 'bot'"):
        row_to_example({"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}, "x:1")
    with pytest.raises(KieloError, match="x:1: the last message is not from the assistant"):
        row_to_example({"conversations": [{"from": "human", "value": "a"}]}, "x:1")
    path = tmp_path / "sharegpt.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_examples(path)[0].messages == ex.messages


def test_missing_path_is_not_a_hub_id(tmp_path):
    with pytest.raises(KieloError, match="data file .*nope.jsonl does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    for path in ("data/missing/train", "mydata/train.jsonl"):  # two slashes, a file suffix: paths, never hub ids
        with pytest.raises(KieloError, match=f"data file {path} does not exist"):
            load_examples(path)


def test_hub_id_without_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read once when datasets was imported
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    started = time.time()
    with pytest.raises(KieloError, match="dataset `kielo-test/no-such-set` is not in the local cache and the hub is off") as e:
        load_examples("kielo-test/no-such-set")
    assert time.time() - started < 15
    assert "save_to_disk" in e.value.fix


def _stream_config(model, path, out, data):
    return tiny_config(
        model,
        path,
        out,
        data={"streaming": True, "validation_split": 0.0, "validation": str(path), **data},
        training={"max_steps": 5, "save_every": 2, "keep_last": 1},
        lora={"r": 4, "alpha": 8, "dropout": 0.1},
    )


def _weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def _rows_file(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    return data


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_stream_layout_seeks_to_the_same_batches(tiny_llama, tmp_path, packing):
    """From any saved position, a fresh stream builds the micro-batches an unbroken one built next, across
    the end of the set (6 rows, so epochs wrap)."""
    from kielo.data.stream import stream_layout
    from kielo.data.template import resolve_template
    from kielo.model.bundle import make_encoder
    from kielo.model.load import load_tokenizer

    cfg = _stream_config(tiny_llama, _rows_file(tmp_path), tmp_path / "o", {"packing": packing, "max_length": 64 if packing else 128})
    tok = load_tokenizer(str(tiny_llama))
    encoder = make_encoder(tok, resolve_template(tok, "auto"), cfg)
    first = stream_layout(cfg, encoder, 0)
    batches, positions = [], []
    for i in range(8):
        positions.append(first.position())
        batches.append(first.batch(i))
    assert first.position()["epoch"] >= 1
    assert len({tuple(b.indices) for b in batches}) > 1
    for at in (1, 3, 5):
        other = stream_layout(cfg, encoder, 0)
        other.seek(positions[at])
        for i in range(at, 8):
            b = other.batch(i)
            assert b.indices == batches[i].indices and torch.equal(b.input_ids, batches[i].input_ids), (at, i)
    with pytest.raises(RuntimeError, match="read in order"):
        other.batch(3)


def test_streaming_resumes_exactly(tiny_llama, tmp_path, monkeypatch):
    """A streamed, packed run interrupted after its first checkpoint and resumed ends with the uninterrupted
    run's adapter; the checkpoint holds the stream position."""
    data = _rows_file(tmp_path)
    extra = {"packing": True, "max_length": 64}
    full = train(_stream_config(tiny_llama, data, tmp_path / "full", extra), progress=False)
    assert full["steps"] == 5 and full["epochs"] is None and full["stream_position"]["epoch"] >= 1
    assert "data.train was streamed" in (tmp_path / "full" / "README.md").read_text(encoding="utf-8")

    real_prune = ckpt.prune_checkpoints

    def crash(*args, **kwargs):
        real_prune(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "prune_checkpoints", crash)
    cfg = _stream_config(tiny_llama, data, tmp_path / "cut", extra)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt, "prune_checkpoints", real_prune)
    step2 = tmp_path / "cut" / "checkpoints" / "step-2"
    state = torch.load(step2 / ckpt.STATE_FILE, weights_only=True)
    assert state["stream"]["cursor"] == 2 and state["stream"]["row"] > 0
    mid = _weights(step2)
    train(cfg, resume=True, progress=False)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # training moved it after the checkpoint
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_streaming_needs_max_steps(tiny_llama, data_file, tmp_path):
    cfg = tiny_config(
        tiny_llama, data_file, tmp_path / "o", data={"streaming": True, "validation_split": 0.0}, training={"max_steps": 0}
    )
    with pytest.raises(KieloError, match="set training.max_steps"):
        train(cfg, progress=False)
    dpo = tiny_config(
        tiny_llama, data_file, tmp_path / "o", data={"streaming": True, "validation_split": 0.0}, training={"objective": "dpo"}
    )
    with pytest.raises(KieloError, match="data.streaming is not supported with training.objective dpo"):
        train(dpo, progress=False)
    with pytest.raises(KieloError, match="data.validation_split"):
        tiny_config(tiny_llama, data_file, tmp_path / "o", data={"streaming": True, "validation_split": 0.25})
