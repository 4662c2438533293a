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


def test_auto_offloads_wide_models_on_cuda_only():
    """training.checkpoint_offload auto: on with checkpointing on CUDA for models 4,096 or more wide, not with
    fsdp; on/off as set; nothing without checkpointing."""
    from kielo.config.load import from_dict
    from kielo.model.offload import AUTO_OFFLOAD_WIDTH, offload_on

    def on(device="cuda", width=AUTO_OFFLOAD_WIDTH, **training):
        return offload_on(from_dict({"training": training}).training, device, width)

    assert from_dict({}).training.checkpoint_offload == "auto"
    assert on()
    assert not on(width=AUTO_OFFLOAD_WIDTH - 1)  # Gemma 3 1B's 1,152, Gemma 3 4B's 2,560
    assert not on(device="cpu")
    assert not on(distributed="fsdp")
    assert not on(gradient_checkpointing=False)
    assert on(device="cpu", width=64, checkpoint_offload="on")
    assert not on(checkpoint_offload="off")
    assert not on(checkpoint_offload="on", gradient_checkpointing=False)


def test_checkpoint_offload_keeps_its_boolean_spellings():
    from kielo.config.load import from_dict
    from kielo.errors import KieloError

    for given, want in ((True, "on"), (False, "off"), ("true", "on"), ("False", "off"), ("auto", "auto")):
        assert from_dict({"training": {"checkpoint_offload": given}}).training.checkpoint_offload == want
    with pytest.raises(KieloError, match="checkpoint_offload"):
        from_dict({"training": {"checkpoint_offload": "sometimes"}})
    assert from_dict({"training": {"checkpoint_offload": "auto", "distributed": "fsdp"}}).training.distributed == "fsdp"


def test_the_plan_counts_what_auto_turns_on(monkeypatch):
    """`kielo plan` and the run's memory plan estimate a wide model with its inputs offloaded under auto, a
    narrow one without; planned on the machine that runs it (host=True), auto stays off where the pinned bytes
    would be over the host's room, as the load decides."""
    import kielo.model.offload as offload
    from kielo.config.load import from_dict
    from kielo.model.precision import Precision
    from kielo.plan.known import known_config
    from kielo.plan.planner import full_rows, make_plan, setup_for
    from kielo.plan.shape import shape_from_config

    llama = shape_from_config(known_config("meta-llama/Llama-3.1-8B"))
    gemma = shape_from_config(known_config("google/gemma-3-1b-pt"))
    config = from_dict({"data": {"max_length": 2048}, "training": {"micro_batch_size": 2}})
    bf16 = Precision(torch.bfloat16, True)
    rows = full_rows(config)
    assert setup_for(config, bf16, rows, 2, True, llama).checkpoint_offload
    assert not setup_for(config, bf16, rows, 2, True, gemma).checkpoint_offload
    assert not setup_for(config, bf16, rows, 2, False, llama).checkpoint_offload
    off = from_dict({"data": {"max_length": 2048}, "training": {"checkpoint_offload": False}})
    assert not setup_for(off, bf16, rows, 2, True, llama).checkpoint_offload
    plan = make_plan(config, llama, bf16, rows, 80 * 2**30, "fit")
    assert plan.offloaded == 32 * 2 * 2048 * 4096 * 2 and "pinned host memory: 1.00 GiB" in plan.describe()
    monkeypatch.setattr(offload, "host_room", lambda: 2**30 - 1)  # one byte short of the 1 GiB it needs
    assert setup_for(config, bf16, rows, 2, True, llama).checkpoint_offload  # kielo plan: another machine
    assert not setup_for(config, bf16, rows, 2, True, llama, host=True).checkpoint_offload
    assert make_plan(config, llama, bf16, rows, 80 * 2**30, "fit", host=True).offloaded == 0
