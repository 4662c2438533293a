"""The merged weights' dtype: ``auto`` keeps the adapter's update (fp16 where the range allows, else fp32), and a
dtype that loses more than the stated share of the update fails the merge's verdict."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import ROWS, tiny_config
from safetensors import safe_open
from safetensors.torch import load_file

from kielo.config.load import load_config
from kielo.errors import KieloError
from kielo.merge.run import REPORT_FILE, merge

FAST = ["--samples", "2", "--max_new_tokens", "8"]


@pytest.fixture(autouse=True)
def without_llama_cpp(monkeypatch):
    """These tests check kielo's writer and transformers' reader; tests/test_gguf_llama_cpp.py checks llama.cpp's path."""
    monkeypatch.setenv("KIELO_LLAMA_CPP", "off")


def cpu_config():
    return load_config(overrides={"training.device": "cpu"})


def stored_dtypes(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.fixture(scope="module")
def runs(tiny_bloom, tiny_llama, tmp_path_factory):
    """3-step adapters on tiny BLOOM (weights of std 0.3: the update is small against them) and tiny Llama."""
    from kielo.train.trainer import train

    root = tmp_path_factory.mktemp("merge-dtype")
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4), encoding="utf-8")
    out = {}
    for name, model in (("bloom", tiny_bloom), ("llama", tiny_llama)):
        train(tiny_config(model, data, root / name, training={"max_steps": 3}), progress=False)
        weights = load_file(str(root / name / "adapter_model.safetensors"))
        assert any(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k), "training must move LoRA B off zero"
        out[name] = root / name
    return out


def test_default_keeps_a_small_update_in_fp16(runs, tmp_path, capsys):
    from kielo.cli import main

    out = tmp_path / "merged"
    assert main(["merge", str(runs["bloom"]), "--output_dir", str(out), "--gguf", *FAST]) == 0
    from kielo.merge.options import MAX_UPDATE_ERROR  # after the run: on code without it, the run is what fails

    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_FILE).read_text())
    s = report["storage"]
    assert report["dtype"] == s["dtype"] == "fp16" and s["requested"] == "auto" and "within fp16's range" in s["why"]
    assert stored_dtypes(out) == {"F16"}
    # The point of the rule: this update is small enough that bf16 would lose more than the share, fp16 doesn't.
    assert s["update_error"]["fp16"] <= MAX_UPDATE_ERROR < s["update_error"]["bf16"]
    assert s["passed"] and report["passed"] and report["verification"]["passed"]
    assert "verdict: PASS" in printed and "stored as: fp16" in printed
    # --gguf_type auto follows the chosen dtype: the file holds exactly the stored weights.
    assert report["gguf"]["type"] == "f16" and report["gguf"]["passed"] and (out / report["gguf"]["file"]).is_file()


def test_forced_bf16_of_a_small_update_fails_the_verdict(runs, tmp_path, capsys):
    from kielo.cli import main

    out = tmp_path / "merged"
    assert main(["merge", str(runs["bloom"]), "--output_dir", str(out), "--dtype", "bf16", *FAST]) == 1
    from kielo.merge.options import MAX_UPDATE_ERROR  # after the run: on code without it, the run is what fails

    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_FILE).read_text())  # written: bf16 was asked for, and the report says what it cost
    assert stored_dtypes(out) == {"BF16"}
    assert report["storage"]["update_error"]["bf16"] > MAX_UPDATE_ERROR
    assert not report["storage"]["passed"] and not report["passed"]
    assert "verdict: FAIL: storing the merged weights in bf16 changes the adapter's update by" in printed
    # The same dtype on an update large against its weights keeps it, and passes.
    assert main(["merge", str(runs["llama"]), "--output_dir", str(tmp_path / "llama"), "--dtype", "bf16", *FAST]) == 0
    assert json.loads((tmp_path / "llama" / REPORT_FILE).read_text())["passed"]


def test_weights_beyond_fp16s_range_are_stored_in_fp32(runs, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    big = tmp_path / "big"
    shutil.copytree(tiny_llama, big)
    model = AutoModelForCausalLM.from_pretrained(big)
    with torch.no_grad():  # a token the sample prompts never use: only the weights' range changes, not the activations
        model.model.embed_tokens.weight[-1, 0] = 70000.0
    model.save_pretrained(big)
    out = tmp_path / "merged"
    report = merge(cpu_config(), str(runs["llama"]), out, model=str(big), samples=2, max_new_tokens=8)
    s = report["storage"]
    assert report["dtype"] == "fp32" and "embed_tokens" in s["why"] and s["weight_peak"]["value"] == 70000.0
    assert stored_dtypes(out) == {"F32"} and report["passed"]
    # Asked for fp16 anyway: that weight becomes inf, and the logit check refuses the merge (nothing written).
    with pytest.raises(KieloError, match=r"merge check \(fp16\) failed: largest logit difference inf"):
        merge(cpu_config(), str(runs["llama"]), tmp_path / "fp16", model=str(big), dtype="fp16", samples=2, max_new_tokens=8)
    assert not (tmp_path / "fp16").exists()


def test_the_auto_rule_and_the_verdict():
    from kielo.merge.options import MAX_UPDATE_ERROR
    from kielo.merge.storage import FP16_LIMIT, Peak, choose, failure

    small, errors = Peak(1.0, "w"), {"fp16": 0.01, "bf16": 0.08, "fp32": 0.0}
    assert choose(errors, small, Peak(10.0, "a"))[0] == "fp16"
    name, why = choose(errors, small, Peak(FP16_LIMIT, "layers.1"))
    assert name == "fp32" and "activation layers.1" in why
    assert choose(errors, small, Peak(float("nan"), "a"))[0] == "fp32"
    assert choose({**errors, "fp16": 2 * MAX_UPDATE_ERROR}, small, Peak(10.0, "a"))[0] == "fp32"
    # The verdict: the update's share, and fp16's own range (an explicit fp16 of a model it can't hold).
    assert failure("fp16", errors, small, Peak(10.0, "a")) is None
    assert "changes the adapter's update by 8.0%" in failure("bf16", errors, small, Peak(10.0, "a"))
    assert "overflows: activation layers.14" in failure("fp16", errors, small, Peak(1e5, "layers.14"))
    assert failure("fp32", errors, small, Peak(1e5, "layers.14")) is None


def test_a_nan_logit_fails_the_comparison(tiny_llama):
    """An overflowed dtype shows as NaN or inf logits: they must fail the check, not vanish in max()."""
    from transformers import AutoModelForCausalLM

    from kielo.merge.verify import capture_reference, compare

    device = torch.device("cpu")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    reference = capture_reference(model, [[2, 40, 41, 42, 43]], {"max_new_tokens": 4, "eos_token_id": [1], "pad_token_id": 0}, device)
    assert compare(model, reference, 0.01, device)[0]["passed"]
    with torch.no_grad():
        model.lm_head.weight[5] = float("nan")
    result, _ = compare(model, reference, 0.01, device, generate=False)
    assert not result["passed"] and result["max_abs_logit_diff"] == float("inf")
