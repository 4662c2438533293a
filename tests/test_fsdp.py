"""FSDP2 sharding of a tiny 4-bit QLoRA model on CPU with gloo, 2 ranks: forward and backward run, and the
sharded model computes what the unsharded one does; each known FSDP2 + bitsandbytes failure that runs on
CPU is reproduced and shown to be handled (see kielo/train/fsdp.py)."""

from __future__ import annotations

import os

import pytest
import torch
from fault_harness import _ctx, distributed_env

from kielo.config.schema import LoraConfig, QuantizationConfig


def _load(folder, storage: torch.dtype):
    """The tiny model in bf16 with NF4 weights stored as ``storage`` and kielo's fused LoRA (bf16 input)."""
    from transformers import AutoModelForCausalLM

    from kielo.model.adapter import add_lora
    from kielo.model.load import bnb_config, keep_4bit_layout

    q = QuantizationConfig(bits=4, compute_dtype="bf16")
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, quantization_config=bnb_config(q, torch.bfloat16, storage), device_map={"": "cpu"}
    )
    keep_4bit_layout(model)
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    model = add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), "fused")
    with torch.no_grad():  # B starts at zero: give it values so A's gradient and the LoRA output are not zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.train()
    return model


def _loss_and_grads(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[n] = g.float().clone()
    return float(loss), grads


def _rank(rank: int, port: int, folder: str, out: str, case: str) -> None:
    import torch.distributed as dist

    from kielo.train.fsdp import shard_model, storage_dtype

    os.environ.update(distributed_env(rank, 2, port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    try:
        ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
        if case == "shard":
            model = _load(folder, torch.bfloat16)
            assert storage_dtype(model) == torch.bfloat16
            result["ref"] = _loss_and_grads(model, ids)
            model.zero_grad(set_to_none=True)
            shard_model(model)
            layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
            result["sharded_type"] = type(layer.weight).__name__
            result["got"] = _loss_and_grads(model, ids)
        elif case == "cast":  # the payload cast by the policy: refused, and what it would compute
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            model = _load(folder, torch.float32)
            result["ref"] = float(model(input_ids=ids, labels=ids).loss)
            try:
                shard_model(model, param_dtype=torch.bfloat16)
            except ValueError as e:
                result["refused"] = str(e)
            mesh = init_device_mesh("cpu", (2,))
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for layer in model.base_model.model.model.layers:
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
            try:
                result["cast"] = float(model(input_ids=ids, labels=ids).loss)
            except RuntimeError as e:  # bitsandbytes reads the cast payload as bytes of another size
                result["cast"] = str(e)
        elif case == "uint8":
            model = _load(folder, torch.uint8)
            try:
                shard_model(model)
            except ValueError as e:
                result["refused"] = str(e)
    finally:
        torch.save(result, f"{out}.{rank}")
        dist.destroy_process_group()


def _run(case, tiny_llama, tmp_path):
    from kielo.train.launch import free_port

    port = free_port()
    procs = [_ctx.Process(target=_rank, args=(r, port, str(tiny_llama), str(tmp_path / case), case)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    return [torch.load(tmp_path / f"{case}.{r}", weights_only=False) for r in range(2)]


def test_fsdp2_sharded_4bit_model_runs_forward_and_backward(tiny_llama, tmp_path):
    """Per-layer fully_shard of a bf16-stored NF4 model with kielo's fused LoRA node: the loss and the LoRA
    gradients (gathered) equal the unsharded model's. The fused node's backward dequantizes an unsharded
    weight that lost its quant_state (axolotl #2992): without the layer's copy it raises."""
    for result in _run("shard", tiny_llama, tmp_path):
        assert result["sharded_type"] == "DTensor"  # the 4-bit payload itself is sharded
        ref_loss, ref = result["ref"]
        loss, got = result["got"]
        assert loss == pytest.approx(ref_loss, rel=1e-3)
        assert got.keys() == ref.keys() and len(ref) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
        assert any(float(g.abs().max()) > 0 for g in ref.values())
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=2e-2, atol=2e-3)


def test_fsdp2_policy_that_casts_the_4bit_payload_is_refused(tiny_llama, tmp_path):
    """fp32-stored NF4 with param_dtype bf16 (the corruption of accelerate #3983): the policy's cast changes
    the packed bytes, so the layer either fails (bitsandbytes 0.50 on CPU: the payload no longer reshapes) or
    computes another loss; shard_model refuses that policy."""
    for result in _run("cast", tiny_llama, tmp_path):
        assert "would cast the packed 4-bit weights" in result["refused"]
        cast = result["cast"]
        assert (isinstance(cast, str) and "invalid for input" in cast) or abs(cast - result["ref"]) > 0.05


def test_fsdp2_refuses_uint8_storage(tiny_llama, tmp_path):
    """uint8 storage (bitsandbytes' default; accelerate #3874): refused with the fix named."""
    for result in _run("uint8", tiny_llama, tmp_path):
        assert "bnb_4bit_quant_storage" in result["refused"]
