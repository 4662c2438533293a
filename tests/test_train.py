"""Training on tiny models with real NF4 layers on CPU: it learns, saves, reloads, resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from kielo.data.batches import BatchLayout, collate_padded
from kielo.data.prepare import prepare_data
from kielo.errors import KieloError
from kielo.model.bundle import load_bundle
from kielo.model.load import keep_4bit_layout, load_tokenizer
from kielo.train import checkpoint as ckpt
from kielo.train.loss import chunked_loss_sum
from kielo.train.step import accumulate_gradients
from kielo.train.trainer import train


def adapter_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def base_logits(model_dir, ids, bits=4):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = (
        BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
        )
        if bits
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=q, device_map={"": "cpu"}).eval()
    if bits:
        # The 4-bit layers' own function: bitsandbytes >= 0.49 would otherwise switch them, on an AVX512-BF16
        # CPU, to a bf16 kernel for inference that differs from it by ~1e-3 (see keep_4bit_layout).
        keep_4bit_layout(model)
    return model


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """One short QLoRA run shared by the checks below."""
    out = tmp_path_factory.mktemp("run")
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    from conftest import ROWS

    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4), encoding="utf-8")
    cfg = tiny_config(tiny_llama, data, out / "run", training={"max_steps": 6})
    summary = train(cfg, progress=False)
    return cfg, summary, out / "run"


def test_base_is_real_nf4(tiny_llama, data_file, tmp_path):
    import bitsandbytes as bnb

    bundle = load_bundle(tiny_config(tiny_llama, data_file, tmp_path / "o"), for_training=True)
    layers = [m for m in bundle.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every projection of both layers
    assert layers[0].weight.quant_state.quant_type == "nf4"
    assert bundle.model.is_gradient_checkpointing and bundle.model.training
    assert not any(p.requires_grad for p in bundle.model.parameters())


def test_training_moves_the_adapter_and_lowers_loss(trained):
    cfg, summary, out = trained
    weights = adapter_weights(out)
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "LoRA B starts at zero; training must move it"
    assert summary["validation_loss_end"] < summary["validation_loss_start"]
    assert summary["train_loss_last"] < summary["train_loss_first"]


def test_output_folder_is_complete(trained):
    cfg, summary, out = trained
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "kielo_config.yaml",
        "metrics.jsonl",
        "summary.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [0, 6]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    gen = json.loads((out / "generation_config.json").read_text())
    tok = load_tokenizer(str(out))
    assert gen["eos_token_id"] == [tok.eos_token_id] and tok.pad_token_id != tok.eos_token_id
    assert "### Vastaus" in tok.chat_template
    for key in (
        "steps",
        "tokens_seen",
        "wall_time_s",
        "peak_memory_bytes",
        "train_loss_first",
        "validation_loss_start",
        "validation_loss_end",
    ):
        assert summary[key] is not None


def test_plain_peft_reload_gives_kielo_logits(trained, tiny_llama):
    """Plain transformers + peft load the adapter and reproduce kielo's logits; the base alone differs."""
    from peft import PeftModel

    from kielo.config.load import load_config

    cfg, _, out = trained
    ours = load_bundle(load_config(overrides={"model": str(out), "quantization.compute_dtype": "fp32"}), for_training=False)
    ids = torch.tensor([ours.encoder.prompt_ids([{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}])])
    with torch.no_grad():
        kielo_logits = ours.model(input_ids=ids).logits
        base = base_logits(tiny_llama, ids)
        base_only = base(input_ids=ids).logits
        plain = PeftModel.from_pretrained(base, str(out)).eval()
        plain_logits = plain(input_ids=ids).logits
    torch.testing.assert_close(plain_logits, kielo_logits, atol=1e-5, rtol=1e-5)
    assert (plain_logits - base_only).abs().max() > 1e-3


def test_trained_position_loss_equals_full_logits_loss(tiny_gemma, data_file, tmp_path):
    bundle = load_bundle(tiny_config(tiny_gemma, data_file, tmp_path / "o", quantization={"bits": 0}), for_training=False)
    items, _, _ = prepare_data(bundle)
    batch = collate_padded(items[:3], bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        s, n = chunked_loss_sum(bundle.model, batch)
        logits = bundle.model(**batch.model_inputs()).logits
        full = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )
    assert n == batch.trained_tokens
    torch.testing.assert_close(s, full, atol=1e-4, rtol=1e-5)


def test_accumulation_normalizes_by_all_trained_tokens(tiny_llama, data_file, tmp_path):
    """Two micro-batches of one give the gradients of one batch of two (examples of different lengths)."""
    from kielo.model.adapter import add_lora

    cfg = tiny_config(tiny_llama, data_file, tmp_path / "o", quantization={"bits": 0}, training={"gradient_checkpointing": False})
    bundle = load_bundle(cfg, for_training=True)
    model = add_lora(bundle.model, cfg.lora)
    for n, p in model.named_parameters():  # LoRA B starts at 0, which would zero A's gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    items, _, _ = prepare_data(bundle)
    a, b = sorted(items, key=lambda it: len(it.labels))[0], sorted(items, key=lambda it: len(it.labels))[-1]
    assert a.trained_tokens != b.trained_tokens
    pad = bundle.tokenizer.pad_token_id

    def grads(micro):
        model.zero_grad()
        accumulate_gradients(model, micro, torch.device("cpu"), chunked_loss_sum)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    together = grads([collate_padded([a, b], pad)])
    split = grads([collate_padded([a], pad), collate_padded([b], pad)])
    torch.testing.assert_close(split, together, atol=1e-6, rtol=1e-4)
    # The wrong rule (mean of per-micro-batch means) gives different gradients: the check can fail.
    model.zero_grad()
    for mb in ([a], [b]):
        s, n = chunked_loss_sum(model, collate_padded(mb, pad))
        (s / n / 2).backward()
    naive = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert not torch.allclose(naive, together, atol=1e-6, rtol=1e-4)


def test_resume_continues_exactly(tiny_llama, data_file, tmp_path, monkeypatch):
    """A run interrupted after its step-3 checkpoint and resumed ends with the uninterrupted run's adapter."""
    extra = {"training": {"max_steps": 6, "save_every": 3, "keep_last": 1}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    train(tiny_config(tiny_llama, data_file, tmp_path / "full", **extra), progress=False)

    real_prune = ckpt.prune_checkpoints

    def crash(*args, **kwargs):
        real_prune(*args, **kwargs)
        raise KeyboardInterrupt  # the machine went away right after the checkpoint

    monkeypatch.setattr(ckpt, "prune_checkpoints", crash)
    cfg = tiny_config(tiny_llama, data_file, tmp_path / "cut", **extra)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt, "prune_checkpoints", real_prune)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut")] == ["step-3"]
    with pytest.raises(KieloError, match="holds an unfinished training run .last checkpoint: step-3."):
        train(cfg, progress=False)
    summary = train(cfg, resume=True, progress=False)
    assert summary["steps"] == 6
    full, resumed = adapter_weights(tmp_path / "full"), adapter_weights(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    assert any(not torch.equal(full[k], adapter_weights(tmp_path / "cut" / "checkpoints" / "step-3")[k]) for k in full)
    for k in full:
        assert torch.equal(resumed[k], full[k]), k  # bit for bit, dropout included
    # The checkpoint holds a loadable adapter, optimizer and data position, loadable without pickle.
    state = torch.load(tmp_path / "cut" / "checkpoints" / "step-3" / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 3 and "optimizer" in state and "rng" in state


def test_packed_training_runs_and_counts_tokens(tiny_gemma, data_file, tmp_path):
    cfg = tiny_config(tiny_gemma, data_file, tmp_path / "p", data={"packing": True, "max_length": 128}, training={"max_steps": 2})
    bundle = load_bundle(cfg, for_training=True)
    items, _, _ = prepare_data(bundle)
    layout = BatchLayout(items, 2, bundle.tokenizer.pad_token_id, 1, packing=True, max_length=128)
    assert sum(layout.batch(i).trained_tokens for i in range(layout.per_epoch)) == sum(
        it.trained_tokens - (it.labels[0] != -100) for it in items
    )
    summary = train(cfg, progress=False)
    assert summary["steps"] == 2


def test_8bit_optimizer_on_cpu_is_a_clear_error(tiny_llama, data_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    cfg = tiny_config(tiny_llama, data_file, tmp_path / "o", training={"optimizer": "paged_adamw_8bit"})
    with pytest.raises(KieloError, match="needs a CUDA GPU"):
        train(cfg, progress=False)
