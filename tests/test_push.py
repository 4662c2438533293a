"""`kielo push`: the upload plan of a run folder, checked offline with --dry_run (files, their paths in the
repository, the card); bad input exits 2 with a message. The real upload needs a network and a token."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import tiny_config

from kielo.cli import main
from kielo.train.trainer import train


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    data = tmp_path_factory.mktemp("push-data") / "train.jsonl"
    from conftest import ROWS

    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 2) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("push") / "run"
    train(tiny_config(tiny_llama, data, out, training={"max_steps": 1, "save_every": 1}), progress=False)
    return out


def _dry_run(capsys, *argv):
    code = main(["push", *map(str, argv), "--dry_run"])
    out = capsys.readouterr().out
    head, _, card = out.partition("--- README.md (model card) ---\n")
    return code, json.loads(head), card


def test_dry_run_plans_adapter_card_and_gguf(run_dir, tmp_path, capsys):
    gguf = tmp_path / "model-f16.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    code, plan, card = _dry_run(capsys, run_dir, "--repo", "kielo-test/tiny-adapter", "--private", "--gguf", gguf)
    assert code == 0 and plan["repo"] == "kielo-test/tiny-adapter" and plan["private"] is True
    files = plan["files"]
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
        "kielo_config.yaml",
        "summary.json",
    ):
        assert files[name] == str(run_dir / name)
    assert files["model-f16.gguf"] == str(gguf)
    assert not any(k.startswith(("checkpoints", ".kielo")) for k in files)
    assert not any((run_dir / d).exists() for d in ("tensorboard", "mlruns", "wandb"))  # no tracker unless report_to names one
    own = (run_dir / "README.md").read_text(encoding="utf-8")
    assert card == own + "\n"  # print() adds the last newline
    assert card.startswith("---\nlibrary_name: peft\n") and "## Hyperparameters" in card and "## How to use it" in card
    assert plan["card_bytes"] == len(own.encode("utf-8"))


def test_bad_input_exits_2(run_dir, tmp_path, capsys):
    assert main(["push", str(tmp_path), "--repo", "a/b", "--dry_run"]) == 2
    assert "is not a kielo run folder" in capsys.readouterr().err
    assert main(["push", str(run_dir), "--repo", "not-a-repo", "--dry_run"]) == 2
    assert "is not a hub repository id" in capsys.readouterr().err
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"PK\x03\x04")
    assert main(["push", str(run_dir), "--repo", "a/b", "--gguf", str(fake), "--dry_run"]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert main(["push", str(broken), "--repo", "a/b", "--dry_run"]) == 2
    assert "no adapter_model.safetensors" in capsys.readouterr().err
    (broken / "adapter_config.json").unlink()
    assert main(["push", str(broken), "--repo", "a/b", "--dry_run"]) == 2
    assert "holds no finished adapter" in capsys.readouterr().err


@pytest.mark.skipif(
    not os.environ.get("KIELO_PUSH_TEST_REPO"), reason="the real upload needs a network, a hub token and KIELO_PUSH_TEST_REPO"
)
def test_real_upload(run_dir):
    from huggingface_hub import HfApi

    repo = os.environ["KIELO_PUSH_TEST_REPO"]
    assert main(["push", str(run_dir), "--repo", repo, "--private"]) == 0
    assert {"adapter_model.safetensors", "README.md"} <= set(HfApi().list_repo_files(repo))
