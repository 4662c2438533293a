"""The model card (README.md) a run writes in place of PEFT's empty template, and compare's held-out numbers in it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re

import pytest
import yaml
from conftest import ROWS, tiny_config

from kielo.evaluate.run import compare
from kielo.runs.saved import read_metrics
from kielo.train.trainer import train

PEFT_TEMPLATE = "[More Information Needed]"
HELD_OUT_BEGIN, HELD_OUT_END = "<!-- kielo:held-out -->", "<!-- /kielo:held-out -->"


def curve(records: list[dict], split: str) -> dict:
    """First, last and lowest loss of a split, each a metrics.jsonl record."""
    points = [r for r in records if r["split"] == split]
    return {"first": points[0], "last": points[-1], "best": min(points, key=lambda r: r["loss"]), "points": len(points)}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    """A tiny QLoRA run (real NF4 layers) with a checkpoint at step 2 of 4."""
    root = tmp_path_factory.mktemp("card")
    data = write_jsonl(root / "train.jsonl", ROWS * 4)
    out = root / "run"
    train(tiny_config(tiny_llama, data, out, training={"save_every": 2, "keep_last": 2}), progress=False)
    return out, data


def _code_block(card: str, lang: str) -> str:
    found = re.findall(rf"```{lang}\n(.*?)\n```", card, re.S)
    assert len(found) == 1, card
    return found[0]


def test_the_card_replaces_peft_template_and_describes_the_run(run, tiny_llama):
    out, data = run
    card = (out / "README.md").read_text(encoding="utf-8")
    records = read_metrics(out)
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[0] != train_losses[-1]  # training moved the adapter: there is a curve to summarize
    assert PEFT_TEMPLATE not in card and "## Model Details" not in card

    # Hub metadata up front, then the base, the data with its hash, the template.
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft" and "kielo" in meta["tags"]
    assert f"- model: `{tiny_llama}`" in card and "4-bit nf4, double quantization" in card
    assert hashlib.sha256(data.read_bytes()).hexdigest() in card
    assert "| train | " + str(data) + " | 18 | 18 | 0 |" in card  # 24 rows, a quarter split off for validation
    assert "| validation | " in card and "validation_split 0.25, seed 1" in card
    assert (out / "chat_template.jinja").read_text(encoding="utf-8").strip() in card
    assert "end token: `<eos>`" in card and "(resolved: builtin)" in card

    # Every key of the resolved config's sections, with its value.
    saved = yaml.safe_load((out / "kielo_config.yaml").read_text(encoding="utf-8"))
    for section in ("quantization", "lora", "data", "training", "generation"):
        for key, value in saved[section].items():
            shown = "[] (none)" if value == [] else "—" if value is None else str(value)
            assert f"| {section}.{key} | {shown} |" in card, (section, key)
    assert "| lora.r | 4 |" in card and "| training.learning_rate | 0.01 |" in card

    # The curve: first, last and best train and validation losses with their steps, from metrics.jsonl.
    for split in ("train", "validation"):
        c = curve(records, split)
        cells = [f"{c[k]['loss']:.4f} (step {c[k]['step']})" for k in ("first", "last", "best")]
        assert f"| {split} | " + " | ".join(cells) + f" | {c['points']} |" in card, split
    assert curve(records, "train")["points"] == 4 and curve(records, "validation")["last"]["step"] == 4

    # No held-out numbers yet, and how to get them; how to load it with kielo.
    held = card[card.index(HELD_OUT_BEGIN) : card.index(HELD_OUT_END)]
    assert "Not measured yet" in held and f"kielo compare --model {out}" in held
    assert f'kielo prompt --adapter {out} "' in card
    assert "see the base model's licence" in card  # the tiny base's folder names no licence


def test_each_checkpoint_has_its_own_card(run):
    out, _ = run
    ckpt = out / "checkpoints" / "step-2"
    card = (ckpt / "README.md").read_text(encoding="utf-8")
    assert PEFT_TEMPLATE not in card
    assert "this checkpoint: step 2 of 4" in card and f"adapter_path = {str(ckpt)!r}" in card
    # The curve stops at the checkpoint's step.
    c = curve([r for r in read_metrics(out) if r["step"] <= 2], "train")
    assert f"| train | {c['first']['loss']:.4f} (step 1) | {c['last']['loss']:.4f} (step 2) |" in card
    assert "(step 4)" not in card
    assert not list((out / "checkpoints").glob(".README*")) and not list(out.glob(".README*"))  # no temporary file left


def test_the_cards_transformers_code_runs_as_written(run):
    out, _ = run
    code = _code_block((out / "README.md").read_text(encoding="utf-8"), "python")
    assert "PeftModel.from_pretrained(base, adapter_path)" in code and 'bnb_4bit_quant_type="nf4"' in code
    # Shorter answers keep the test fast; the rest runs exactly as the card shows it.
    code = code.replace("generation_config=generation)", "generation_config=generation, max_new_tokens=4)")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "card", "exec"), {})
    assert printed.getvalue().endswith("\n")  # it got as far as printing the answer


def test_compare_writes_its_numbers_into_the_card(run, tiny_llama, tmp_path):
    out, _ = run
    before = (out / "README.md").read_text(encoding="utf-8")
    held_out = write_jsonl(tmp_path / "held_out.jsonl", ROWS[:3])
    cfg = tiny_config(tiny_llama, held_out, tmp_path / "cmp", generation={"max_new_tokens": 4})
    report = compare(cfg, held_out, [str(out)], generate=2, bootstrap=50, progress=False)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Not measured yet" not in card
    s = report["summary"]
    base_loss, tuned_loss, d = s["models"]["base"]["loss"], s["models"]["run"]["loss"], s["deltas"]["run"]["loss"]
    row = f"| response loss | {base_loss:.4f} | {tuned_loss:.4f} | {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |"
    assert row in card, card
    assert hashlib.sha256(held_out.read_bytes()).hexdigest() in card and "2 generated" in card
    assert report["files"]["html"] in card
    # Only the held-out section changed.
    start, end = before.index(HELD_OUT_BEGIN), before.index(HELD_OUT_END) + len(HELD_OUT_END)
    assert card.startswith(before[:start]) and card.endswith(before[end:])

    # A second comparison replaces the numbers, it does not add a second section.
    compare(cfg, held_out, [str(out)], generate=0, bootstrap=50, output_dir=tmp_path / "cmp2", progress=False)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.count(HELD_OUT_BEGIN) == 1 and "0 generated" in card and str(tmp_path / "cmp2") in card


def test_a_run_with_peft_template_gets_a_whole_card_and_plain_adapters_are_left_alone(run, tmp_path):
    import shutil

    out, _ = run
    old = tmp_path / "old-run"
    shutil.copytree(out, old)
    (old / "README.md").write_text(f"---\nlibrary_name: peft\n---\n\n## Model Details\n\n{PEFT_TEMPLATE}\n", encoding="utf-8")
    from kielo.report.blocks import Paragraph
    from kielo.runs.card import update_held_out

    assert update_held_out(old, [Paragraph("measured: 1.2345")]) == old / "README.md"
    card = (old / "README.md").read_text(encoding="utf-8")
    assert PEFT_TEMPLATE not in card and "measured: 1.2345" in card and "| lora.r | 4 |" in card
    assert "| train | " in card  # the curve, from the run's metrics.jsonl

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(out / name, plain / name)
    (plain / "README.md").write_text("their card", encoding="utf-8")
    assert update_held_out(plain, [Paragraph("x")]) is None
    assert (plain / "README.md").read_text(encoding="utf-8") == "their card"


def test_the_base_models_licence_comes_from_its_files(tmp_path):
    from kielo.model.provenance import GEMMA_TERMS_URL, base_provenance

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/base\n---\n# A model\n", encoding="utf-8")
    (tmp_path / "LICENSE").write_text("Apache", encoding="utf-8")
    found = base_provenance(str(tmp_path))
    assert found.licence == "apache-2.0" and found.hub_id == "org/base" and found.terms_files == (str(tmp_path / "LICENSE"),)
    (tmp_path / "README.md").write_text("# no front matter\n", encoding="utf-8")
    assert base_provenance(str(tmp_path)).licence is None
    # The embedded default is under the Gemma terms whether or not its package is at hand.
    default = base_provenance("gemma-3-270m", str(tmp_path / "gemma"))
    assert default.licence == "gemma" and default.licence_link == GEMMA_TERMS_URL and default.hub_id == "google/gemma-3-270m"
