"""LoRA branches in the input's dtype: peft's arithmetic on an fp32 stream, close to it on bf16 with
fewer bytes kept for backward."""

from __future__ import annotations

import pytest
import torch

from kielo.model.lora_forward import restore_peft_forward
from kielo.train.loss import chunked_loss_sum
from tests.conftest import tiny_config


def _model(folder, tmp_path, dropout=0.1, **training):
    from kielo.model.adapter import add_lora
    from kielo.model.load import load_base_model
    from kielo.model.source import ModelSource

    config = tiny_config(
        folder,
        tmp_path / "d.jsonl",
        tmp_path / "o",
        lora={"r": 4, "alpha": 8, "dropout": dropout},
        training=training,
        quantization={"bits": 4, "compute_dtype": training.pop("compute", "fp32")},
    )
    model = add_lora(load_base_model(ModelSource(str(folder)), config, torch.device("cpu")), config.lora)
    torch.manual_seed(3)
    with torch.no_grad():  # B starts at zero; give it values so that A gets gradients too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _batch(vocab):
    from kielo.data.batches import collate_padded
    from kielo.data.encode import Encoded

    g = torch.Generator().manual_seed(0)
    items = []
    for i, n in enumerate((20, 14)):
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        items.append(Encoded(ids, [-100] * 3 + ids[3:], 3, n - 3, index=i))
    return collate_padded(items, 0)


def _loss_and_grads(model, batch, seed=7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks on both paths
    s, _ = chunked_loss_sum(model, batch)
    s.backward()
    return float(s), torch.cat(
        [p.grad.flatten().float() for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)]
    )


def test_fp32_stream_is_peft_exactly(tiny_llama, tmp_path):
    model = _model(tiny_llama, tmp_path)
    model.train()
    batch = _batch(model.config.vocab_size)
    ours = _loss_and_grads(model, batch)
    restore_peft_forward(model)
    theirs = _loss_and_grads(model, batch)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-6)
    assert torch.allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-7)
    assert ours[1].abs().sum() > 0


def _saved_bytes(model, batch) -> int:
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.manual_seed(7)
        chunked_loss_sum(model, batch)
    return total


def test_bf16_stream_matches_peft_and_keeps_less(tiny_llama, tmp_path):
    model = _model(tiny_llama, tmp_path, compute="bf16", stream_dtype="compute", gradient_checkpointing=False)
    model.train()
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    batch = _batch(model.config.vocab_size)
    ours = _loss_and_grads(model, batch)
    ours_bytes = _saved_bytes(model, batch)
    restore_peft_forward(model)
    theirs = _loss_and_grads(model, batch)
    theirs_bytes = _saved_bytes(model, batch)
    assert ours[0] == pytest.approx(theirs[0], rel=2e-3)
    cos = torch.nn.functional.cosine_similarity(ours[1], theirs[1], dim=0)
    assert cos > 0.999, cos
    # peft keeps an fp32 copy of every LoRA layer's input; here LoRA keeps the bf16 input itself.
    assert ours_bytes < 0.8 * theirs_bytes, (ours_bytes, theirs_bytes)
    # LoRA weights (and so their gradients and optimizer state) stay fp32
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("checkpointing", "dropout"), [(False, 0.0), (True, 0.0), (True, 0.1)])
def test_fused_4bit_lora_matches_the_unfused_paths(tiny_llama, tmp_path, monkeypatch, checkpointing, dropout):
    """On a bf16 stream, base + LoRA is one node (LoraLinear4bit): same loss and gradients as the unfused
    branch and as peft's forward (same dropout masks), with and without recomputation in backward."""
    import kielo.model.lora_forward as lf

    model = _model(tiny_llama, tmp_path, dropout=dropout, compute="bf16", stream_dtype="compute", gradient_checkpointing=checkpointing)
    model.train()
    batch = _batch(model.config.vocab_size)
    calls = []
    fused_forward = lf.LoraLinear4bit.forward
    monkeypatch.setattr(lf.LoraLinear4bit, "forward", staticmethod(lambda *a: calls.append(1) or fused_forward(*a)))
    fused = _loss_and_grads(model, batch)
    n_lora = sum(1 for m in model.modules() if hasattr(m, "_kielo_peft_forward"))
    assert len(calls) == n_lora * (2 if checkpointing else 1)  # every LoRA layer, again when recomputed
    lf.set_fused_lora(model, False)
    unfused = _loss_and_grads(model, batch)
    restore_peft_forward(model)
    peft = _loss_and_grads(model, batch)
    assert fused[1].abs().sum() > 0
    for other in (unfused, peft):
        assert fused[0] == pytest.approx(other[0], rel=2e-3)
        cos = torch.nn.functional.cosine_similarity(fused[1], other[1], dim=0)
        assert cos > 0.999, cos


def test_dora_keeps_pefts_forward(tiny_llama, tmp_path):
    from kielo.model.adapter import add_lora
    from kielo.model.load import load_base_model
    from kielo.model.source import ModelSource

    config = tiny_config(tiny_llama, tmp_path / "d.jsonl", tmp_path / "o", lora={"r": 4, "use_dora": True})
    model = add_lora(load_base_model(ModelSource(str(tiny_llama)), config, torch.device("cpu")), config.lora)
    batch = _batch(model.config.vocab_size)
    s, _ = chunked_loss_sum(model, batch)
    s.backward()
    magnitudes = [p.grad for n, p in model.named_parameters() if "magnitude" in n]
    assert magnitudes and all(g is not None for g in magnitudes)


def test_kept_weights_give_the_same_steps_with_one_dequantize_less(tiny_llama, tmp_path, monkeypatch):
    """set_keep_weight (bench lever 18): under checkpointing each 4-bit weight is dequantized in the forward and
    the recomputation, not again in backward, and the loss and LoRA gradients are those of the default node."""
    import kielo.model.lora_forward as lf

    model = _model(tiny_llama, tmp_path, dropout=0.0, compute="bf16", stream_dtype="compute", gradient_checkpointing=True)
    model.train()
    batch = _batch(model.config.vocab_size)
    calls = []
    dequantize = lf.dequantize_layer
    monkeypatch.setattr(lf, "dequantize_layer", lambda *a: calls.append(1) or dequantize(*a))
    default = _loss_and_grads(model, batch)
    n_lora = sum(1 for m in model.modules() if hasattr(m, "_kielo_peft_forward"))
    assert len(calls) == n_lora  # the backward's; the forward's go through the 4-bit layer itself
    lf.set_keep_weight(model, True)
    kept = _loss_and_grads(model, batch)
    assert len(calls) == n_lora + 2 * n_lora  # forward and recomputation, none in backward
    assert default[1].abs().sum() > 0
    assert kept[0] == default[0]
    assert torch.equal(kept[1], default[1])
