"""FSDP2 sharding of a QLoRA model: each decoder layer its own ``fully_shard`` unit, the 4-bit base and the
LoRA sharded alike, for models whose 4-bit weights do not fit one card.

What makes 4-bit weights shardable, and the failures seen where it was not done (accelerate issues #3874 and
#3983, axolotl #2992; ``tests/test_fsdp.py`` reproduces each one that runs on CPU):

- FSDP shards and all-gathers the packed 4-bit payload as a plain tensor; loading it with
  ``bnb_4bit_quant_storage`` = the compute dtype (:func:`kielo.model.load.bnb_config`) gives every
  parameter of a layer one floating dtype, as FSDP's mixed precision expects.
- The mixed-precision policy must not cast the payload: ``param_dtype`` other than the storage dtype turns
  packed bytes into other bytes and the layer computes with garbage, silently. :func:`shard_model` takes
  ``param_dtype`` from the storage and refuses a 4-bit weight stored in another dtype.
- FSDP2 unshards a ``Params4bit`` into a plain ``Parameter``: its ``quant_state`` is gone. bitsandbytes'
  own forward restores it from the layer (``Linear4bit.quant_state``); kielo's fused LoRA node dequantizes
  the base weight itself in backward, so :func:`kielo.model.load.dequantize_4bit_weight` reads the layer's
  copy when the weight has none.
- The LoRA weights belong to the decoder layer's unit (not units of their own), so they are unsharded when
  the layer's fused node reads them.

Gradients are reduced in fp32. Activation checkpointing is the model's own (non-reentrant, set at load),
which FSDP2 composes with.
"""

from __future__ import annotations

import logging

import torch

from kielo.plan.shape import _decoder_layers

log = logging.getLogger(__name__)


def quantized_weights(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The bitsandbytes 4-bit layers of ``model``, by name."""
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def storage_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The one dtype the 4-bit payloads are stored in (None without 4-bit layers); a ValueError if they differ."""
    dtypes = {m.weight.dtype for _, m in quantized_weights(model)}
    if len(dtypes) > 1:
        raise ValueError(f"4-bit weights stored in several dtypes: {sorted(map(str, dtypes))}")
    return next(iter(dtypes), None)


def shard_model(model: torch.nn.Module, mesh=None, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``fully_shard`` each decoder layer of ``model`` (a PEFT model on a 4-bit base) and then the root, over
    ``mesh`` (default: every rank of the process group). ``param_dtype``: the dtype the layers compute in,
    which must be the 4-bit storage dtype (see the module doc); default that dtype. Returns ``model``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    storage = storage_dtype(model)
    if storage is not None and not storage.is_floating_point:
        raise ValueError(
            f"4-bit weights stored as {storage}: FSDP cannot shard them with the rest of a layer; load with "
            "bnb_4bit_quant_storage = the compute dtype"
        )
    param_dtype = param_dtype or storage
    if storage is not None and param_dtype != storage:
        raise ValueError(f"param_dtype {param_dtype} would cast the packed 4-bit weights stored as {storage} into garbage")
    if mesh is None:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(device, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info(
        "FSDP2: %d decoder layers sharded over %d ranks (compute %s, gradients reduced in fp32)", len(layers), mesh.size(), param_dtype
    )
    return model
