"""FSDP2 loading from rank 0 (kielo/train/fsdp_load.py) on CPU with gloo, 2 ranks: rank 1 builds the model
on the meta device and holds none of its weights before sharding, and after sharding both ranks hold exactly
what loading the whole model on every rank gives (the 4-bit shards, quant_states, LoRA), computing the same
loss and LoRA gradients bit for bit."""

from __future__ import annotations

import os

import pytest
import torch
from fault_harness import _ctx, distributed_env


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _rank(rank: int, port: int, folder: str, out: str, rank0_only: bool) -> None:
    import torch.distributed as dist

    from kielo.config.load import from_dict
    from kielo.model.adapter import causal_lm, start_adapter
    from kielo.model.bundle import load_bundle
    from kielo.train.distributed import World, broadcast_parameters
    from kielo.train.fsdp import quantized_weights, shard_model
    from kielo.train.fsdp_load import shard_from_rank0

    os.environ.update(distributed_env(rank, 2, port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank, 2, rank)
    result = {}
    try:
        settings = {"model": {"name": folder}, "quantization": {"bits": 4}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
        config = from_dict(settings | {"training": {"distributed": "fsdp", "device": "cpu", "gradient_checkpointing": False}})
        bundle = load_bundle(config, for_training=True, weights=rank == 0 or not rank0_only)
        torch.manual_seed(0)
        model = start_adapter(bundle.model, config.lora, "fused")
        if world.main or not rank0_only:
            with torch.no_grad():  # B starts at zero: values in it give A a gradient and the LoRA an output
                torch.manual_seed(1)
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.05)
        result["before"] = (_bytes(model.parameters()), _bytes(model.buffers()))
        if rank0_only:
            shard_from_rank0(world, model, torch.device("cpu"))
        else:  # what every rank did before: the whole model loaded, LoRA broadcast, then sharded
            broadcast_parameters(world, [p for p in model.parameters() if p.requires_grad])
            shard_model(model)
        result["after"] = _bytes(_local(p) for p in model.parameters())
        lm = causal_lm(model)
        result["tied"] = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
        result["shards"] = {n: _local(p.detach()).clone() for n, p in model.named_parameters()}
        result["buffers"] = {n: b.clone() for n, b in model.named_buffers()}
        result["quant_states"] = {
            n: {k: v.clone() for k, v in m.quant_state.as_dict(packed=True).items()} for n, m in quantized_weights(model)
        }
        ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        result["loss"] = float(loss.detach())
        result["grads"] = {n: p.grad.full_tensor().clone() for n, p in model.named_parameters() if p.requires_grad}
    finally:
        torch.save(result, f"{out}.{rank}")
        dist.destroy_process_group()


def _run(tiny_llama, tmp_path, rank0_only: bool) -> list[dict]:
    from kielo.train.launch import free_port

    port, out = free_port(), tmp_path / f"load-{rank0_only}"
    procs = [_ctx.Process(target=_rank, args=(r, port, str(tiny_llama), str(out), rank0_only)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def _assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for k in want:
        if isinstance(want[k], dict):
            _assert_equal(got[k], want[k])
        else:
            # Bytes, not values: a packed 4-bit payload read as floats holds NaN patterns, never equal to themselves.
            assert got[k].dtype == want[k].dtype and torch.equal(_raw(got[k]), _raw(want[k])), k


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])  # Gemma: the output head tied to the embedding
def test_rank0_loading_equals_loading_everywhere_without_weights_on_rank1(name, request, tmp_path):
    folder = request.getfixturevalue(name)
    new, old = _run(folder, tmp_path, rank0_only=True), _run(folder, tmp_path, rank0_only=False)
    # Loaded everywhere, rank 1 held the whole model before sharding; loaded from rank 0 it held no parameter
    # or buffer at all (the module tree was on the meta device), and after sharding what it held before: its
    # half of the sharded tensors plus the output head, whole on every rank (0.69 and 0.79 of the tiny models'
    # bytes; a tied head is one tensor with the embedding, on both paths).
    whole = old[1]["before"][0]
    assert old[0]["before"] == old[1]["before"] and whole > 100_000
    assert new[0]["before"] == old[0]["before"]
    assert new[1]["before"] == (0, 0)
    assert new[1]["after"] == old[1]["after"] < 0.8 * whole
    for got, want in zip(new, old, strict=True):
        # Each rank's shards of the 4-bit payloads, norms, embedding and LoRA, its whole output head, rotary
        # tables and every layer's quant_state: the bytes that loading everywhere gives.
        _assert_equal(got["shards"], want["shards"])
        _assert_equal(got["buffers"], want["buffers"])
        assert len(want["quant_states"]) == 2 * 7
        _assert_equal(got["quant_states"], want["quant_states"])
        assert got["tied"] == want["tied"] == (name == "tiny_gemma")
        assert got["loss"] == want["loss"]
        assert any(float(g.abs().max()) > 0 for g in want["grads"].values())
        _assert_equal(got["grads"], want["grads"])
    assert new[0]["loss"] == new[1]["loss"]
