"""training.checkpoint_offload: the offloading checkpoint computes what torch's checkpoint computes (loss, LoRA
gradients, dropout masks), prefetches each layer's input from the layer above, and handles BLOOM's tuple
outputs; the memory planner counts two layer inputs instead of all."""

from __future__ import annotations

import pytest
import torch

from kielo.model.offload import set_checkpoint_offload
from tests.test_lora_forward import _batch, _loss_and_grads, _model


def _decoder_layers(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma", "tiny_bloom"])
def test_offloaded_checkpoint_gives_torch_checkpoint_s_gradients(arch, request, tmp_path):
    model = _model(request.getfixturevalue(arch), tmp_path, dropout=0.1, gradient_checkpointing=True)
    model.train()
    batch = _batch(model.config.vocab_size)
    loss, grads = _loss_and_grads(model, batch)
    layers = set_checkpoint_offload(model, True)
    funcs = {id(m._gradient_checkpointing_func) for m in _decoder_layers(model)}
    chain = _decoder_layers(model)[0]._gradient_checkpointing_func.chain
    off_loss, off_grads = _loss_and_grads(model, batch)
    assert layers >= 2 and len(funcs) == 1
    assert grads.abs().sum() > 0
    # Same arithmetic, same dropout masks (the recomputation restores the RNG state): equal, not just close.
    assert off_loss == loss
    assert torch.equal(off_grads, grads)
    # BLOOM's blocks get the hidden states positionally too; every layer but the lowest was prefetched from above.
    assert chain.prefetched == layers - 1
    # A wrong RNG restore would change the dropout masks: with another seed before the step the loss moves.
    other, _ = _loss_and_grads(model, batch, seed=8)
    assert other != loss


def test_offload_off_restores_torch_checkpoint(tiny_llama, tmp_path):
    model = _model(tiny_llama, tmp_path, dropout=0.0, gradient_checkpointing=True, checkpoint_offload=True)
    layers = _decoder_layers(model)
    assert all(hasattr(m._gradient_checkpointing_func, "chain") for m in layers)  # the load applied the option
    set_checkpoint_offload(model, False)
    assert not any(hasattr(m._gradient_checkpointing_func, "chain") for m in layers)


def test_planner_counts_two_offloaded_layer_inputs():
    from transformers import LlamaConfig

    from kielo.bench.shapes import SHAPES
    from kielo.plan.memory import Setup, estimate
    from kielo.plan.shape import shape_from_config

    shape = shape_from_config(LlamaConfig(**SHAPES["llama8b"]))
    kept = estimate(shape, Setup(stream_bytes=2, liger=True, fused_head=True))
    off = estimate(shape, Setup(stream_bytes=2, liger=True, fused_head=True, checkpoint_offload=True))
    assert kept.checkpoints == 32 * 4096 * 4096 * 2
    assert off.checkpoints == 2 * 4096 * 4096 * 2
    assert kept.total - off.total == 30 * 4096 * 4096 * 2
