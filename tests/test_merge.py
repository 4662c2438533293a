"""`kielo merge` on tiny models: the merged folder loads with plain transformers and matches base + adapter; the
check catches wrong merges; bad input fails early with nothing written; GGUF round-trips through transformers."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types

import pytest
import torch
from conftest import ROWS, tiny_config
from safetensors.torch import load_file

from kielo.config.load import load_config
from kielo.errors import KieloError
from kielo.merge.options import TOLERANCES
from kielo.merge.run import REPORT_FILE, merge

FP32 = TOLERANCES["fp32"]

FAST = {"samples": 2, "max_new_tokens": 8}


@pytest.fixture(autouse=True)
def without_llama_cpp(monkeypatch):
    """These tests check kielo's writer and transformers' reader; tests/test_gguf_llama_cpp.py checks llama.cpp's path."""
    monkeypatch.setenv("KIELO_LLAMA_CPP", "off")


def cpu_config():
    return load_config(overrides={"training.device": "cpu"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("merge-data") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gguf_gemma(tiny_gemma, tmp_path_factory):
    """tiny_gemma with the settings GGUF can express: llama.cpp's 5-local/1-global layout, queries scaled by head_dim."""
    folder = tmp_path_factory.mktemp("gemma-gguf") / "model"
    shutil.copytree(tiny_gemma, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(layer_types=["sliding_attention"] * cfg["num_hidden_layers"], query_pre_attn_scalar=cfg["head_dim"])
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _train(model, data, out):
    from kielo.train.trainer import train

    train(tiny_config(model, data, out, training={"max_steps": 3}), progress=False)
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(w.abs().max() > 0 for k, w in weights.items() if "lora_B" in k), "training must move LoRA B off zero"
    return out


@pytest.fixture(scope="module")
def llama_run(tiny_llama, data, tmp_path_factory):
    return _train(tiny_llama, data, tmp_path_factory.mktemp("llama-run") / "run")


@pytest.fixture(scope="module")
def gemma_run(gguf_gemma, data, tmp_path_factory):
    return _train(gguf_gemma, data, tmp_path_factory.mktemp("gemma-run") / "run")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def no_leftovers(parent, name):
    return not [p for p in parent.iterdir() if p.name.startswith((name, f".{name}"))]


def test_merge_writes_a_plain_hf_folder_that_matches_base_plus_adapter(llama_run, tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    report = merge(cpu_config(), str(llama_run), out, dtype="fp32", requantize=True, gguf=True, **FAST)
    assert json.loads((out / REPORT_FILE).read_text())["verification"]["passed"]
    v = report["verification"]
    assert v["max_abs_logit_diff"] <= FP32 < report["adapter_effect"]["max_abs_logit_diff"]
    assert v["greedy"]["disagreements"] == 0 and v["greedy"]["identical_answers"] == 2
    assert report["weights"]["passed"] and report["weights"]["adapted_weights"] == 2 * 7

    # Independently of kielo's check: plain transformers + peft.
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(llama_run)).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert (logits(merged, ids) - logits(reference, ids)).abs().max() <= FP32
    with reference.disable_adapter():
        assert (logits(merged, ids) - logits(reference, ids)).abs().max() > 10 * FP32

    # The training prompt format and end token travel with the model.
    assert "### Vastaus" in tok.chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok.eos_token_id in gen["eos_token_id"]

    r = report["requantized"]
    assert (out / "nf4" / "config.json").is_file() and "quantization_config" in json.loads((out / "nf4" / "config.json").read_text())
    assert r["loss_merged"] > 0 and r["loss_nf4"] > 0 and "validation split" in r["held_out"]
    assert report["vs_trained"]["quantization"]["bits"] == 4 and report["vs_trained"]["max_abs_logit_diff"] > 0

    # GGUF of a Llama: q/k rows permuted for llama.cpp's rotary layout, in the model and in the adapter's B.
    g = report["gguf"]
    assert g["passed"] and g["max_abs_logit_diff"] < 1e-3 and g["tokenizer"]["identical_ids"] == 2
    assert g["adapter"]["passed"] and g["adapter"]["adapted_weights"] == 2 * 7 and (out / g["adapter"]["file"]).is_file()


def test_gguf_export_of_gemma3_round_trips_through_transformers(gemma_run, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from kielo.cli import main

    out = tmp_path / "gemma-merged"
    code = main(
        ["merge", str(gemma_run), "--output_dir", str(out), "--dtype", "fp32", "--gguf", "--samples", "2", "--max_new_tokens", "8"]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "PASS" in printed and "transformers-verified" in printed
    report = json.loads((out / REPORT_FILE).read_text())
    g = report["gguf"]
    assert g["architecture"] == "gemma3" and g["type"] == "f32" and g["passed"]
    assert g["tokenizer"]["passed"] and g["status"] == "transformers-verified"
    assert g["adapter"]["passed"] and g["adapter"]["alpha"] == 8.0

    # Independently: the file alone, through transformers' loader, gives the merged model's logits.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / g["file"]).symlink_to(out / g["file"])
    config = AutoConfig.from_pretrained(alone, gguf_file=g["file"])
    config.query_pre_attn_scalar = 16  # not in the file; llama.cpp derives it from key_length
    from_gguf = AutoModelForCausalLM.from_pretrained(
        alone,
        gguf_file=g["file"],
        config=config,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=g["file"], dequantize=True),
    )
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(alone, gguf_file=g["file"])
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hyvää huomenta!"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert (
        ids
        == AutoTokenizer.from_pretrained(out).apply_chat_template(
            [{"role": "user", "content": "Hyvää huomenta!"}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    assert (logits(from_gguf.eval(), ids) - logits(merged, ids)).abs().max() < 1e-3
    assert tok.convert_ids_to_tokens(ids)[:2] == ["<bos>", "<start_of_turn>"]


def tiny_bloom(folder):
    from conftest import build_tokenizer
    from transformers import AutoModelForCausalLM, BloomConfig

    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=len(tok), hidden_size=64, n_layer=2, n_head=4))
    with torch.no_grad():  # non-trivial biases and norms, so a mix-up would show
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_gguf_export_round_trips_per_architecture(arch, tiny_llama, tmp_path):
    """Llama's q/k row permutation and BLOOM's q/k/v regrouping are undone exactly by transformers' reader."""
    from transformers import AutoModelForCausalLM, GgufConfig

    from kielo.merge.gguf_export import write_gguf
    from kielo.model.load import load_tokenizer

    model = (AutoModelForCausalLM.from_pretrained(tiny_llama) if arch == "llama" else tiny_bloom(tmp_path)).eval()
    tokenizer = load_tokenizer(str(tiny_llama))
    for kind, tol in (("f32", 1e-4), ("q8_0", 0.5)):
        path = tmp_path / kind / "m.gguf"
        path.parent.mkdir()
        info = write_gguf(model, tokenizer, path, kind, "tiny", None, None)
        assert info["tensor_types"].get(kind) and info["tokenizer"]["pre_tokenizer"] == "gpt-2"
        back = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, quantization_config=GgufConfig(gguf_file=path.name, dequantize=True)
        )
        ids = list(range(5, 40))
        assert (logits(back.eval(), ids) - logits(model, ids)).abs().max() < tol, kind


def test_a_wrong_merge_fails_the_check_and_leaves_nothing(llama_run, tmp_path, monkeypatch):
    import kielo.merge.merge as merge_module

    real = merge_module.merge_adapter

    def doubled(peft_model, *args):  # the classic bug: the update applied with twice its scaling
        from peft.tuners.lora import LoraLayer

        for m in peft_model.modules():
            if isinstance(m, LoraLayer):
                m.scaling = {k: 2 * v for k, v in m.scaling.items()}
        return real(peft_model, *args)

    def nudged(peft_model, *args):  # weights changed after the merge: only the logit check can see it
        model, report = real(peft_model, *args)
        with torch.no_grad():
            model.model.layers[-1].mlp.down_proj.weight.mul_(2)
        return model, report

    monkeypatch.setattr(merge_module, "merge_adapter", doubled)
    with pytest.raises(KieloError, match="merged weights are wrong: .* differs from W \\+ scaling"):
        merge(cpu_config(), str(llama_run), tmp_path / "bad", dtype="fp32", **FAST)
    assert no_leftovers(tmp_path, "bad")
    monkeypatch.setattr(merge_module, "merge_adapter", nudged)
    with pytest.raises(KieloError, match="merge check .* failed: largest logit difference"):
        merge(cpu_config(), str(llama_run), tmp_path / "bad", dtype="fp32", **FAST)
    assert no_leftovers(tmp_path, "bad")


def test_a_merge_into_4bit_weights_fails_the_check(llama_run, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kielo.merge.merge import merge_adapter
    from kielo.merge.verify import capture_reference, check, compare

    device = torch.device("cpu")
    reference_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(llama_run)).eval()
    gen = {"max_new_tokens": 6, "eos_token_id": [1], "pad_token_id": 0}
    reference = capture_reference(reference_model, [[2, 40, 41, 42, 43], [2, 90, 91]], gen, device)

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    four_bit = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=q, device_map={"": "cpu"}), str(llama_run)
    )
    with pytest.raises(KieloError, match="refusing to merge into quantized"):
        merge_adapter(four_bit, str(llama_run))
    wrong = four_bit.merge_and_unload()  # what the issue warns about: merged into NF4, then dequantized
    wrong.dequantize()
    result, _ = compare(wrong.float().eval(), reference, FP32, device)
    assert not result["passed"] and result["max_abs_logit_diff"] > 5 * FP32
    with pytest.raises(KieloError, match="failed"):
        check(result, "the merge check", "fix")
    merged, weights = merge_adapter(reference_model, str(llama_run))
    assert weights["passed"] and weights["adapted_weights"] == 14 and weights["update_error"]["fp32"] == 0
    right, _ = compare(merged, reference, FP32, device)
    assert right["passed"]


def test_adapter_of_another_base_is_a_clear_error(gemma_run, tiny_llama, tmp_path):
    with pytest.raises(KieloError, match="was trained on .*gemma3_text.*model_type gemma3_text vs llama"):
        merge(cpu_config(), str(gemma_run), tmp_path / "out", model=str(tiny_llama))
    assert no_leftovers(tmp_path, "out")


def test_gguf_that_cannot_express_the_model_fails_before_work(gemma_run, tiny_gemma, tmp_path):
    # tiny_gemma: a global layer after one local one, which GGUF readers can't represent.
    with pytest.raises(KieloError, match="attention layout"):
        merge(cpu_config(), str(gemma_run), tmp_path / "out", model=str(tiny_gemma), gguf=True)
    assert no_leftovers(tmp_path, "out")


def test_not_enough_disk_or_memory_fails_before_writing(llama_run, tmp_path, monkeypatch):
    import kielo.merge.resources as resources
    import kielo.model.load as load

    real_usage = shutil.disk_usage
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(KieloError, match="not enough disk space"):
        merge(cpu_config(), str(llama_run), tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
    monkeypatch.setattr(resources.shutil, "disk_usage", real_usage)
    monkeypatch.setattr(load, "_available_memory", lambda device: 1000)
    with pytest.raises(KieloError, match="needs about .* but only"):
        merge(cpu_config(), str(llama_run), tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_existing_output_and_bad_options_are_refused(llama_run, tmp_path, capsys):
    from kielo.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["merge", str(llama_run), "--output_dir", str(tmp_path / "full")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert main(["merge", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_llama_cpp_greedy_check_when_installed(monkeypatch):
    """The llama.cpp path, with a stand-in module (llama-cpp-python is an optional install)."""
    from kielo.merge.gguf_verify import check_with_llama_cpp, llama_cpp_available
    from kielo.merge.verify import Reference

    answers = {(2, 7): [5, 6, 1], (2, 8): [9, 4, 1]}

    class Llama:
        def __init__(self, model_path, n_ctx, verbose):
            pass

        def reset(self):
            pass

        def generate(self, tokens, **kw):
            yield from answers[tuple(tokens)]

    fake = types.ModuleType("llama_cpp")
    fake.Llama = Llama
    fake.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    vocab = 12
    ref = Reference([[2, 7, 5, 6, 1], [2, 8, 9, 3, 1]], [2, 2], [torch.zeros(5, vocab), torch.zeros(5, vocab)], {"eos_token_id": [1]})
    ref.logits[1][2, 3] = 5.0  # (position 2 chooses token 3) the merged model prefers 3 clearly where llama.cpp said 4
    result = check_with_llama_cpp("m.gguf", ref)
    assert result["identical_answers"] == 1 and result["disagreements"] == 1 and not result["passed"]
    ref.logits[1][2, 3] = 0.1  # ... or only by a hair: a near-tie
    assert check_with_llama_cpp("m.gguf", ref)["passed"]
    assert llama_cpp_available()
