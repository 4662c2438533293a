"""GGUF files checked in llama.cpp itself: its tokenizer, its greedy answers and where they stop, its held-out
loss for each quantization, and the Ollama Modelfile. Needs llama.cpp's tools (`make llama-cpp`, or
KIELO_LLAMA_CPP); skipped with that message without them. The numbers each test measures are printed
(`pytest -s` shows them)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROWS, build_model, tiny_config
from safetensors.torch import load_file

from kielo.merge.llama_cpp import absent_note, find_llama_cpp

LLAMA_CPP = find_llama_cpp()
pytestmark = pytest.mark.skipif(LLAMA_CPP is None, reason=absent_note())


@pytest.fixture(scope="module")
def stopping_run(tmp_path_factory):
    """A tiny Llama trained until it answers its (duplicated) training rows and stops with the end token."""
    from kielo.train.trainer import train

    root = tmp_path_factory.mktemp("llama-cpp")
    model = build_model(root / "model", "llama")
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4), encoding="utf-8")
    out = root / "run"
    train(tiny_config(model, data, out, lora={"r": 8, "alpha": 16}, training={"max_steps": 60, "learning_rate": 2e-2}), progress=False)
    assert any(w.abs().max() > 0 for k, w in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k)
    return out


@pytest.fixture(scope="module")
def merged(stopping_run, tmp_path_factory):
    """``kielo merge --gguf q8_0,q4_k_m`` of the run: exit status, what it printed, the folder."""
    from kielo.cli import main

    out = tmp_path_factory.mktemp("merged") / "merged"
    args = ["merge", str(stopping_run), "--output_dir", str(out), "--dtype", "fp32", "--gguf", "q8_0,q4_k_m"]
    code = main([*args, "--samples", "4", "--max_new_tokens", "24"])
    return code, out


def test_merged_gguf_runs_in_llama_cpp_and_each_quantization_is_measured(merged):
    code, out = merged
    report = json.loads((out / "merge_report.json").read_text())
    g = report["gguf"]
    print(json.dumps({k: g[k] for k in ("file", "writer", "llama_cpp", "quality", "quantized", "broken_types")}, indent=1))
    assert code in (0, 1) and g["status"] == "llama.cpp-verified"
    # The tiny tokenizer is one llama.cpp's converter doesn't know: kielo's writer made the file, and says why.
    assert g["writer"] == "kielo" and g["converter_refused"]
    t, greedy = g["llama_cpp"]["tokenizer"], g["llama_cpp"]["greedy"]
    assert t["identical_ids"] == t["texts"] == 4
    assert greedy["identical_answers"] == greedy["identical_prompt_ids"] == greedy["sequences"] == 4
    # The precondition of the stop check: the merged model does end its answers, and llama.cpp ends them there too.
    assert greedy["merged_stopped"] >= 3 and greedy["same_stop"] == 4
    assert g["quality"]["end_token_rate"] >= 0.75 and g["quality"]["loss"] > 0
    kinds = {q["type"]: q for q in g["quantized"]}
    assert set(kinds) == {"q8_0", "q4_k_m"}
    assert abs(kinds["q8_0"]["loss_change"]) < 0.05 and kinds["q8_0"]["passed"]
    assert kinds["q4_k_m"]["bytes"] < kinds["q8_0"]["bytes"]
    # The verdict follows the measurements: a broken type fails it (exit 1), none broken passes.
    assert (code == 1) == bool(g["broken_types"]) == (not report["passed"])
    for mf in g["modelfiles"]:
        text = (out / mf["file"]).read_text()
        assert f"FROM ./{mf['gguf']}" in text and 'PARAMETER stop "<eos>"' in text and "### Vastaus:" in text
        assert mf["passed"] and (out / mf["gguf"]).is_file()
    assert {mf["file"] for mf in g["modelfiles"]} == {"Modelfile", "Modelfile.q8_0", "Modelfile.q4_k_m"}


def test_llama_cpp_checks_fail_on_a_wrong_tokenizer_and_a_wrong_end_token(merged, tmp_path):
    """Deliberately wrong inputs: the untrained base's file against the merged model's answers (other tokens, no
    stop where training taught one), and another tokenizer's ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from kielo.data.records import load_examples
    from kielo.data.template import render, resolve_template
    from kielo.merge.gguf_export import write_gguf
    from kielo.merge.gguf_llama_cpp import check_greedy, check_tokenizer
    from kielo.merge.verify import capture_reference

    _, out = merged
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    template = resolve_template(tok, "builtin")
    data = out.parent / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS[:3]), encoding="utf-8")
    examples = load_examples(str(data), None)
    prompts = [
        tok(render(tok, template, ex.prompt_messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for ex in examples
    ]
    gen = {"max_new_tokens": 24, "eos_token_id": [template.end_token_id], "pad_token_id": tok.pad_token_id}
    reference = capture_reference(model, prompts, gen, model.device)
    ends = sum(reference.answer(i)[-1] == template.end_token_id for i in range(len(prompts)))
    assert ends >= 2, "the trained model must end its answers for the stop check to mean anything"

    good = tmp_path / "good.gguf"
    write_gguf(model, tok, good, "f32", "tiny", template.end_token_id, template.chat_template)
    assert check_greedy(LLAMA_CPP, good, tok, reference, {template.end_token_id}, template.end_token_id)["passed"]
    # The untrained base in the file: llama.cpp answers otherwise and does not stop where the merged model does.
    base_path = yaml.safe_load((out / "kielo_config.yaml").read_text())["model"]["name"]
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    base_ref = capture_reference(base, prompts, gen, base.device)
    assert all(base_ref.answer(i)[-1] != template.end_token_id for i in range(len(prompts))), "the base must not stop"
    wrong = tmp_path / "base.gguf"
    write_gguf(base, tok, wrong, "f32", "tiny", template.end_token_id, template.chat_template)
    bad = check_greedy(LLAMA_CPP, wrong, tok, reference, {template.end_token_id}, template.end_token_id)
    assert not bad["passed"] and bad["identical_answers"] == bad["near_ties"] == 0 and bad["same_stop"] == len(prompts) - ends, bad
    assert "first_difference" in bad

    texts = [render(tok, template, ex.messages) for ex in examples]
    assert check_tokenizer(LLAMA_CPP, good, tok, texts)["passed"]
    other = Tokenizer(models.BPE(unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"]))
    other_tok = PreTrainedTokenizerFast(tokenizer_object=other, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    result = check_tokenizer(LLAMA_CPP, good, other_tok, texts)
    assert not result["passed"] and "first_mismatch" in result
