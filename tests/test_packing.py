"""Packed rows for decoders without position ids: BLOOM's ALiBi with a block-diagonal causal mask.

Each check compares a packed row against its examples run alone, and shows that the check can fail (the
same row without the block mask leaks one example into the next).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, tiny_config

from kielo.data.batches import collate_packed, collate_padded
from kielo.data.encode import IGNORE, Encoded
from kielo.data.prepare import prepare_data
from kielo.errors import KieloError
from kielo.train.loss import chunked_loss_sum
from kielo.train.packing import block_causal_mask, model_inputs, packing_support
from kielo.train.trainer import train


def random_examples(lengths: list[int], vocab: int, seed: int = 0) -> list[Encoded]:
    """Examples of random tokens whose first third is a prompt (labels -100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        p = n // 3
        out.append(Encoded(ids, [IGNORE] * p + ids[p:], p, n - p, index=i))
    return out


def load_lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_block_causal_mask_follows_position_restarts():
    # Row 0: examples of 3, 2 and 1 tokens, then 2 of padding (a segment of its own); row 1: one example.
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])
    segments = [[0, 0, 0, 1, 1, 2, 3, 3], [0] * 8]
    mask = block_causal_mask(pos, torch.float32)
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.float32
    for row, seg in enumerate(segments):
        allowed = torch.tensor([[j <= i and seg[i] == seg[j] for j in range(8)] for i in range(8)])
        assert mask[row, 0][allowed].eq(0).all()
        assert mask[row, 0][~allowed].eq(torch.finfo(torch.float32).min).all()
    assert block_causal_mask(pos, torch.bfloat16).min() == torch.finfo(torch.bfloat16).min


def test_packing_support_per_decoder(tiny_llama, tiny_bloom, tmp_path):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    assert packing_support(load_lm(tiny_llama)) == "position_ids"
    bloom = load_lm(tiny_bloom)
    assert packing_support(bloom) == "alibi"
    install = bloom.transformer.build_alibi_tensor
    assert packing_support(bloom) == "alibi" and bloom.transformer.build_alibi_tensor == install  # once
    # A 2D padding mask still gets the library's ALiBi (padded batches, generation).
    pad = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(
        bloom.transformer.build_alibi_tensor(pad, 4, torch.float32), build_alibi_tensor(pad, 4, torch.float32), atol=0, rtol=0
    )
    mpt = load_lm(build_model(tmp_path / "mpt", "mpt"))  # ALiBi, but not a decoder kielo packs
    assert packing_support(mpt) is None
    packed = collate_packed([random_examples([5, 6], 50)], 0)
    with pytest.raises(KieloError, match="data.packing needs"):
        model_inputs(mpt, packed)
    assert model_inputs(mpt, collate_padded(random_examples([5, 6], 50), 0))["attention_mask"].ndim == 2


@torch.no_grad()
def test_bloom_packed_rows_equal_examples_alone(tiny_bloom):
    lm = load_lm(tiny_bloom)
    vocab = lm.config.vocab_size
    rows = [random_examples([11, 5, 17], vocab, seed=1), random_examples([9], vocab, seed=2)]  # row 1 padded
    batch = collate_packed(rows, pad_id=0)
    inputs = model_inputs(lm, batch)
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["attention_mask"].shape == (2, 1, 33, 33)
    packed = lm(**inputs, use_cache=False).logits
    leaky = lm(input_ids=batch.input_ids, use_cache=False).logits  # plain causal over the whole row
    errors, leaks = [], []
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex.input_ids)
            alone = lm(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits[0]
            errors.append(float((packed[r, at : at + n] - alone).abs().max()))
            leaks.append(float((leaky[r, at : at + n] - alone).abs().max()))
            at += n
    assert max(errors) <= 5e-5, errors  # logits of magnitude ~10
    # The check can fail: without the block mask, the second and third examples of row 0 see the first.
    assert min(leaks[1:3]) >= 1e-1, leaks


@pytest.mark.parametrize("bits", [0, 4])
def test_bloom_packed_loss_and_lora_gradients_equal_examples_alone(tiny_bloom, data_file, tmp_path, bits):
    """Through kielo's loading (NF4 for bits 4), LoRA and loss path, with gradient checkpointing on."""
    from kielo.model.adapter import add_lora
    from kielo.model.bundle import load_bundle

    cfg = tiny_config(tiny_bloom, data_file, tmp_path / "o", quantization={"bits": bits}, training={"gradient_checkpointing": True})
    bundle = load_bundle(cfg, for_training=True)
    model = add_lora(bundle.model, cfg.lora)
    assert model.get_base_model().is_gradient_checkpointing and model.training
    assert any("Linear4bit" in type(m).__name__ for m in model.modules()) == (bits == 4)
    torch.manual_seed(0)
    for n, p in model.named_parameters():  # LoRA B starts at 0, which would zero A's gradients
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    items, _, _ = prepare_data(bundle)
    examples = list({len(it.input_ids): it for it in items}.values())[:3]  # three different lengths
    assert len(examples) == 3
    pad = bundle.tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]

    def run(batches):
        model.zero_grad()
        total, count = 0.0, 0
        for b in batches:
            s, n = chunked_loss_sum(model, b)
            s.backward()
            total, count = total + float(s), count + n
        return total, count, torch.cat([p.grad.flatten() for p in params])

    def cosine(a, b):
        return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))

    packed_loss, packed_n, packed_grads = run([collate_packed([examples], pad)])
    alone_loss, alone_n, alone_grads = run([collate_padded([it], pad) for it in examples])
    assert packed_n == alone_n
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
    assert cosine(packed_grads, alone_grads) > 0.9999 and packed_grads.abs().sum() > 0
    # The check can fail: the same row as one causal sequence (no block mask) is far off.
    leaky = collate_packed([examples], pad)
    leaky.position_ids, leaky.attention_mask = None, torch.ones_like(leaky.input_ids)
    leaky_loss, _, leaky_grads = run([leaky])
    assert leaky_loss != pytest.approx(alone_loss, rel=1e-4)
    assert cosine(leaky_grads, alone_grads) < 0.999


def test_bloom_trains_packed(tiny_bloom, data_file, tmp_path):
    cfg = tiny_config(tiny_bloom, data_file, tmp_path / "p", data={"packing": True, "max_length": 128}, training={"max_steps": 2})
    summary = train(cfg, progress=False)
    assert summary["steps"] == 2 and summary["train_loss_last"] == summary["train_loss_last"]  # not NaN


def test_packing_a_decoder_without_position_ids_or_alibi_is_a_clear_error(data_file, tmp_path):
    mpt = build_model(tmp_path / "mpt", "mpt")
    cfg = tiny_config(mpt, data_file, tmp_path / "o", quantization={"bits": 0}, data={"packing": True})
    with pytest.raises(KieloError, match="data.packing needs a model that takes position ids") as e:
        train(cfg, progress=False)
    assert e.value.fix == "set data.packing: false for this model"
