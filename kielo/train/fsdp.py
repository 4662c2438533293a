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

In ``kielo train`` (``training.distributed: fsdp``) the LoRA's gradients must be summed over the ranks, not
averaged: each rank's loss is already divided by the whole step's trained tokens, as under DDP (see
:mod:`kielo.train.distributed`). FSDP's reduce-scatter averages (a divide factor of 1 needs ``PREMUL_SUM``,
which gloo lacks), so :func:`kielo.train.step.gradient_step` multiplies the reduced shards by the number of
ranks (exact for a power of two). Checkpoints and the final adapter hold whole tensors in
PEFT's format, the same files as a single-process run's: the LoRA weights and the optimizer state are
gathered from the shards (:func:`full_lora_state`, :func:`full_optimizer_state`; collectives, so every rank
calls them) and rank 0 writes them; a resumed run's adapter is loaded by rank 0 before sharding and sent with
the weights (:mod:`kielo.train.fsdp_load`: only rank 0 loads the model), and each rank gets its part of the
optimizer state (:func:`load_optimizer_state`).
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
    """``fully_shard`` each decoder layer of ``model`` (a PEFT model on a 4-bit base) and then the decoder, over
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
    # The root unit is the decoder (embedding, final norm), not the whole model: kielo's loss heads call the
    # decoder and then the output head themselves (Liger's fused head reads its weight directly), so a root
    # around the whole model would never be gathered. The head stays whole on every rank (frozen, so nothing
    # to reduce); a head tied to the embedding keeps that weight whole too.
    from kielo.model.adapter import causal_lm

    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    tied = {head.weight} if head is not None and head.weight is lm.get_input_embeddings().weight else set()
    fully_shard(lm.base_model, mesh=mesh, mp_policy=policy, ignored_params=tied or None)
    log.info(
        "FSDP2: %d decoder layers sharded over %d ranks (compute %s, gradients reduced in fp32)", len(layers), mesh.size(), param_dtype
    )
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters of a sharded model, whole, on the CPU, by the names PEFT's
    ``save_pretrained(state_dict=...)`` expects; a collective: every rank calls it, in the same order."""
    return {n: _full(p.detach()).cpu() for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer state of a sharded model, whole and keyed by parameter name (torch.distributed.checkpoint's
    full state dict, on the CPU); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load a state from :func:`full_optimizer_state` (every rank passes the whole of it) into this rank's
    shards of the optimizer state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def grad_norm(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a float: over DTensor gradients it is a DTensor of the ranks' parts."""
    return float(_full(norm))
