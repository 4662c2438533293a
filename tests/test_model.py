"""Model loading: sources, pad tokens, memory check, quantization modes, untrained-token warning."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_config

from kielo.config.load import load_config
from kielo.errors import KieloError
from kielo.model import load as model_load
from kielo.model.bundle import load_bundle
from kielo.model.load import load_tokenizer, warn_untrained_template_tokens
from kielo.model.source import resolve_model


def test_pad_token_is_distinct_from_end_token(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token  # the common mistake: pad == eos
    tok.save_pretrained(tmp_path)
    fixed = load_tokenizer(str(tmp_path))
    assert fixed.pad_token_id != fixed.eos_token_id and fixed.pad_token == "<pad>"
    assert len(fixed) == len(tok), "no token was added"
    assert fixed.padding_side == "right"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("./no/such/folder", "does not exist"),
        ("/tmp/nonexistent-model.gguf", "GGUF file"),
        ("not a hub id!", "neither an existing path nor a hub id"),
    ],
)
def test_bad_model_names(name, fragment):
    with pytest.raises(KieloError, match=fragment):
        resolve_model(name)


def test_cached_hub_ids_pass_through(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # A hub id already in the local hub cache loads offline: it is taken as it is, without asking the hub.
    snapshot = tmp_path / "models--LumiOpen--Viking-7B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--LumiOpen--Viking-7B" / "refs").mkdir()
    (tmp_path / "models--LumiOpen--Viking-7B" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("LumiOpen/Viking-7B").path == "LumiOpen/Viking-7B"


def test_model_that_cannot_fit_fails_before_loading(tiny_llama, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(model_load, "_available_memory", lambda device: 1000)
    with pytest.raises(KieloError, match="needs about .* GiB .* free"):
        load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o"), for_training=True)


@pytest.mark.parametrize("bits", [0, 8])
def test_other_quantization_modes_load_and_run(tiny_llama, data_file, tmp_path, bits):
    bundle = load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o", quantization={"bits": bits}), for_training=False)
    with torch.no_grad():
        logits = bundle.model(input_ids=torch.tensor([[1, 5, 6]])).logits
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_cpu_inference_dequantizes_once_to_the_same_function(tiny_llama, data_file, tmp_path, monkeypatch):
    import bitsandbytes as bnb

    config = tiny_config(tiny_llama, data_file, tmp_path / "o")
    ids = torch.tensor([[1, 5, 6, 7, 9, 11, 3]])
    fast = load_bundle(config, for_training=False).model
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in fast.modules())
    # The reference: the same 4-bit model with its bitsandbytes layers left in place.
    monkeypatch.setattr(model_load, "dequantize_for_cpu_inference", lambda model: False)
    slow = load_bundle(config, for_training=False).model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in slow.modules())
    a, b = fast(input_ids=ids).logits, slow(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    # A plain (never quantized) model differs: the check above can tell quantized weights from others.
    plain = load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o", quantization={"bits": 0}), for_training=False).model
    assert (plain(input_ids=ids).logits - b).abs().max() > 100 * (a - b).abs().max()


def test_a_validation_pass_leaves_the_4bit_training_function_unchanged(tiny_llama, data_file, tmp_path):
    """An eval-mode forward without gradients (validation) must not change what the 4-bit layers compute
    or differentiate afterwards: bitsandbytes >= 0.49 repacks them for a bf16 CPU kernel without a backward
    unless kielo keeps their layout."""
    from kielo.model.adapter import add_lora
    from kielo.model.load import dequantize_4bit_weight

    cfg = tiny_config(tiny_llama, data_file, tmp_path / "o", lora={"dropout": 0.0}, training={"gradient_checkpointing": False})
    model = add_lora(load_bundle(cfg, for_training=True).model, cfg.lora)
    for n, p in model.named_parameters():  # LoRA B starts at 0, which would zero A's gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.tensor([[1, 5, 6, 7, 9, 11, 3]])
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj.base_layer")
    weight = dequantize_4bit_weight(layer)

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    loss, grads = loss_and_grads()
    assert grads.abs().max() > 0
    model.eval()
    with torch.no_grad():
        eval_loss = model(input_ids=ids, labels=ids).loss
    model.train()
    torch.testing.assert_close(eval_loss, loss, atol=1e-6, rtol=1e-6)
    after_loss, after_grads = loss_and_grads()
    torch.testing.assert_close(after_loss, loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(after_grads, grads, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dequantize_4bit_weight(layer), weight, atol=0, rtol=0)


def test_gpu_only_options_on_cpu_are_clear(tiny_llama, data_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(KieloError, match="no CUDA GPU"):
        load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o", training={"device": "cuda"}), for_training=True)
    with pytest.raises(KieloError, match="fp16 compute is not supported on CPU"):
        load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o", quantization={"compute_dtype": "fp16"}), for_training=True)


def test_warns_about_untrained_template_tokens(tiny_gemma, caplog):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny_gemma))
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma)
    template = tok.chat_template
    assert warn_untrained_template_tokens(model, tok, template) == []
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.convert_tokens_to_ids("<start_of_turn>")] = 0.0
    with caplog.at_level(logging.WARNING):
        assert warn_untrained_template_tokens(model, tok, template) == ["<start_of_turn>"]
    assert "look untrained" in caplog.text


def test_run_folder_as_model_brings_base_and_adapter(tiny_llama, data_file, tmp_path):
    from kielo.train.trainer import train

    train(tiny_config(tiny_llama, data_file, tmp_path / "run", training={"max_steps": 1}), progress=False)
    src = resolve_model(str(tmp_path / "run"))
    assert src.path == str(tiny_llama) and src.adapter == str(tmp_path / "run")
    bundle = load_bundle(load_config(overrides={"model": str(tmp_path / "run")}), for_training=False)
    assert bundle.adapter == str(tmp_path / "run") and hasattr(bundle.model, "peft_config")
