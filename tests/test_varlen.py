"""training.attention: varlen attention of packed rows (kielo.model.varlen).

torch's kernel is flash attention (CUDA only; tests/test_gpu.py runs it). Here the same function runs with a
plain-PyTorch kernel written in this file, one SDPA call per example, so the layout (transposes, segment
bounds from the batch, grouped-query heads, Gemma 3's sliding window) is checked against what SDPA with
transformers' block-diagonal mask computes for the whole model, loss and gradients.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from kielo.config.load import from_dict
from kielo.data.batches import collate_packed, segment_bounds
from kielo.data.encode import IGNORE, Encoded
from kielo.errors import KieloError
from kielo.model import varlen
from kielo.model.precision import resolve_precision
from kielo.train.loss import chunked_loss_sum


def segment_sdpa(q, k, v, cu, max_len, scale, window):
    """(tokens, heads, dim) attention, causal inside each segment of ``cu``, a query seeing ``window`` keys at most."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        i = torch.arange(end - start)
        allowed = (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :] < window) if window else True)
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale).transpose(0, 1)
    return out


def whole_row(q, k, v, cu, max_len, scale, window):
    """The kernel given wrong bounds: each flattened batch as one causal segment (examples see each other)."""
    return segment_sdpa(q, k, v, torch.tensor([0, q.shape[0]]), q.shape[0], scale, window)


def packed_batch(vocab: int, seed: int = 0):
    rng = random.Random(seed)
    items = []
    for index, n in enumerate([23, 31, 9, 40, 27, 18]):  # longer than the tiny Gemma's sliding window of 16
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        labels = [IGNORE] * (n // 3) + ids[n // 3 :]
        items.append(Encoded(ids, labels, n // 3, n - n // 3, index=index))
    return collate_packed([items[:3], items[3:]], pad_id=0)


def loss_and_grads(folder, batch, attention=None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    if attention is not None:
        name, kernel = attention
        varlen.install(model, name, varlen.attention_function(kernel, runs=lambda q: True))
    loss, n = chunked_loss_sum(model, batch)
    loss.backward()
    return float(loss.detach()) / n, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_segment_bounds_follow_the_restarting_positions():
    batch = packed_batch(50)
    assert batch.cu_seqlens.dtype == torch.int32
    # Row 0: 23 + 31 + 9 = 63 tokens, row 1: 40 + 27 + 18 = 85; the row width is 85, so row 0 ends in 22 of padding.
    assert batch.cu_seqlens.tolist() == [0, 23, 54, 63, 85, 125, 152, 170]
    assert batch.max_seqlen == 40
    assert segment_bounds(torch.tensor([[0, 1, 2, 0, 1]]))[0].tolist() == [0, 3, 5]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_varlen_attention_layout_equals_sdpa_with_the_block_mask(request, arch):
    folder = request.getfixturevalue(arch)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(folder).vocab_size
    batch = packed_batch(vocab)
    ref_loss, ref_grads = loss_and_grads(folder, batch)  # SDPA, the mask transformers builds from the positions
    loss, grads = loss_and_grads(folder, batch, (f"{varlen.NAME}_test_{arch}", segment_sdpa))
    assert abs(loss - ref_loss) < 1e-5
    assert torch.allclose(grads, ref_grads, atol=1e-5, rtol=1e-4)
    # The check sees wrong bounds: one segment per flattened batch lets examples attend to each other.
    wrong, wrong_grads = loss_and_grads(folder, batch, (f"{varlen.NAME}_test_{arch}_wrong", whole_row))
    assert abs(wrong - ref_loss) > 1e-3 or not torch.allclose(wrong_grads, ref_grads, atol=1e-4)


def test_gemma_window_is_the_number_of_keys_a_query_sees(tiny_gemma):
    """Off by one in the window (flash's left bound is window - 1) would change the sliding layers' output."""
    from transformers import AutoConfig

    batch = packed_batch(AutoConfig.from_pretrained(tiny_gemma).vocab_size)
    ref_loss, _ = loss_and_grads(tiny_gemma, batch)

    def wider(q, k, v, cu, max_len, scale, window):
        return segment_sdpa(q, k, v, cu, max_len, scale, window + 1 if window else window)

    loss, _ = loss_and_grads(tiny_gemma, batch, (f"{varlen.NAME}_test_wider", wider))
    assert abs(loss - ref_loss) > 1e-5


def test_padded_batches_and_batches_without_bounds_go_through_sdpa(tiny_llama):
    """The registered function runs SDPA itself when no bounds come with the batch: the same numbers."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 50, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    outs = []
    for install in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa")
        if install:
            varlen.install(model)
            assert varlen.uses_varlen(model)
        outs.append(model(input_ids=ids, attention_mask=mask).logits)
    assert torch.equal(outs[0], outs[1])


def cfg(**training):
    return from_dict({"quantization": {"bits": 4}, "training": training})


def test_attention_choice_resolves_and_refuses_what_cannot_run():
    cpu, cuda, bf16 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16
    assert resolve_precision(cfg(), "llama", cpu, torch.float32).varlen is False
    assert resolve_precision(cfg(), "llama", cuda, bf16).varlen is varlen.available()
    assert resolve_precision(cfg(), "bloom", cuda, bf16).varlen is False  # ALiBi: its own attention
    assert resolve_precision(cfg(stream_dtype="fp32"), "llama", cuda, bf16).varlen is False  # flash is 16-bit
    assert resolve_precision(cfg(attention="sdpa"), "llama", cuda, bf16).varlen is False
    with pytest.raises(KieloError, match="training.attention `varlen`") as e:
        resolve_precision(cfg(attention="varlen"), "llama", cpu, torch.float32)
    assert "CUDA" in str(e.value) and "--training.attention auto" in e.value.fix
    with pytest.raises(KieloError, match="'bloom'"):
        resolve_precision(cfg(attention="varlen"), "bloom", cuda, bf16)


def test_only_rows_holding_several_examples_take_the_bounds(tiny_llama):
    """A row that is one example is plain causal attention (SDPA's cuDNN kernel was faster there): no bounds."""
    from transformers import AutoModelForCausalLM

    from kielo.train.packing import model_inputs

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa")
    assert "cu_seq_lens_q" not in model_inputs(model, packed_batch(50))  # SDPA: the mask from the positions
    varlen.install(model)
    assert model_inputs(model, packed_batch(50))["max_length_q"] == 40
    full = collate_packed([[Encoded([5] * 16, [5] * 16, 0, 16)], [Encoded([6] * 16, [6] * 16, 0, 16, index=1)]], 0)
    assert full.cu_seqlens.tolist() == [0, 16, 32]
    assert "cu_seq_lens_q" not in model_inputs(model, full)
