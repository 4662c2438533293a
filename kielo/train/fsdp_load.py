"""Loading a QLoRA model for FSDP2 without the whole model on every rank: rank 0 loads it, the others build
the same module tree on the meta device, and after ``fully_shard`` each rank receives its shard from rank 0.

This is accelerate's ``cpu_ram_efficient_loading`` (and the FSDP-QLoRA recipe) carried to kielo's 4-bit
layers, in three steps that every rank runs together:

1. :func:`share_layout`, before sharding. A module tree built from the config has each 4-bit weight in its
   unquantized shape, while rank 0's packed payload is an (n, 1) tensor of the storage dtype, and FSDP2
   shards along the first dimension: the meta tree takes rank 0's shape and dtype for every parameter (tied
   ones stay tied), so every rank cuts the same shards. bitsandbytes keeps a 4-bit weight's ``quant_state``
   (block scales, code book, nested scales) beside the payload, not in a parameter, so neither FSDP nor a
   state dict moves it (axolotl #2992); rank 0 sends each layer's whole (it is a few percent of the layer) and
   the others rebuild it with ``QuantState.from_dict`` on the layer, where the 4-bit forward and kielo's fused
   LoRA node read it once FSDP2 has replaced the weight by a plain tensor. Buffers (rotary tables) are sent
   whole: non-persistent ones are in no state dict.
2. :func:`kielo.train.fsdp.shard_model` on every rank: meta parameters become meta shards.
3. :func:`fill_from_rank0`: torch.distributed.checkpoint's ``set_model_state_dict(..., full_state_dict=True,
   broadcast_from_rank0=True)`` sends rank 0's tensors one at a time; each rank keeps its slice of the
   sharded ones and the whole of the others (the output head). The LoRA weights, whether new or a resumed
   checkpoint's, travel the same way, so the ranks start identical.

A rank other than 0 thus never holds more than one whole tensor of the model at a time (besides the
quant_states and buffers, which every rank holds whole after sharding anyway).
"""

from __future__ import annotations

import logging
import warnings

import torch

from kielo.train.distributed import World, broadcast_object, comm_device

log = logging.getLogger(__name__)


def rank0_loads(world: World, distributed: str) -> bool:
    """Whether the weights are read by rank 0 only and sent to the others (FSDP in several processes)."""
    return world.active and distributed == "fsdp"


def _quant_states(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    from kielo.train.fsdp import quantized_weights

    return {n: m.weight.quant_state.as_dict(packed=True) for n, m in quantized_weights(model)}


def _with_ties(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, str | None]]:
    """Every parameter name with its tensor and, for a tied one (a head tied to the embedding), the first name
    that holds the same tensor."""
    first: dict[int, str] = {}
    named = []
    for name, p in model.named_parameters(remove_duplicate=False):
        named.append((name, p, first.get(id(p))))
        first.setdefault(id(p), name)
    return named


def _layout(model: torch.nn.Module) -> dict:
    params = [(name, tuple(p.shape), p.dtype, p.requires_grad, tied) for name, p, tied in _with_ties(model)]
    buffers = [(n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()]
    states = {n: {k: (tuple(v.shape), v.dtype) for k, v in qs.items()} for n, qs in _quant_states(model).items()}
    return {"params": params, "buffers": buffers, "quant_states": states}


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def _broadcast(t: torch.Tensor | None, shape, dtype, device: torch.device) -> torch.Tensor:
    import torch.distributed as dist

    t = t.detach().to(device).contiguous() if t is not None else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(t, 0)
    return t


def share_layout(world: World, model: torch.nn.Module, device: torch.device) -> dict[str, torch.Tensor] | None:
    """Step 1 (see the module doc), a collective. Rank 0 passes its loaded model and gets back its whole state
    dict (the tensors themselves, no copy), which :func:`fill_from_rank0` sends after sharding; another rank
    passes its meta model (same module tree), which takes rank 0's shapes, buffers and quant_states, and gets
    None. ``device``: where the buffers and quant_states go (the rank's training device)."""
    import bitsandbytes.functional as bnbf

    layout = broadcast_object(world, _layout(model) if world.main else None)
    comm = comm_device()
    states = _quant_states(model) if world.main else {}
    full = model.state_dict() if world.main else None
    with torch.no_grad():
        if not world.main:
            made: dict[str, torch.nn.Parameter] = {}
            for name, shape, dtype, requires_grad, tied_to in layout["params"]:
                p = made[tied_to] if tied_to else torch.nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"), requires_grad)
                made[name] = p
                owner, attr = _owner(model, name)
                owner._parameters[attr] = p
        own = dict(model.named_buffers())
        for name, shape, dtype in layout["buffers"]:
            t = _broadcast(own[name] if world.main else None, shape, dtype, comm)
            if not world.main:
                owner, attr = _owner(model, name)
                owner._buffers[attr] = t.to(device)
        for layer, parts in layout["quant_states"].items():
            got = {k: _broadcast(states[layer][k] if world.main else None, shape, dtype, comm) for k, (shape, dtype) in parts.items()}
            if not world.main:
                model.get_submodule(layer).quant_state = bnbf.QuantState.from_dict(got, device=device)
    if not world.main:
        log.info(
            "rank %d: module tree on the meta device; %d buffers and %d 4-bit layers' quant_state from rank 0",
            world.rank,
            len(layout["buffers"]),
            len(layout["quant_states"]),
        )
    return full


def fill_from_rank0(world: World, model: torch.nn.Module, full: dict[str, torch.Tensor] | None) -> None:
    """Step 3 (see the module doc), a collective after sharding: rank 0's tensors (``full``, from
    :func:`share_layout`) into every rank's shards and unsharded parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    keys = model.state_dict().keys()  # the quant_state parts bitsandbytes adds to a 4-bit layer's are not among them
    ties = [(name, tied) for name, _, tied in _with_ties(model) if tied]
    state = {k: v for k, v in full.items() if k in keys} if world.main else {}
    with warnings.catch_warnings():
        # On a rank whose tensors are all meta, torch asks the group for its default device through a call it
        # has deprecated, and says so on every run; the device it finds is the one the tensors go to.
        warnings.filterwarnings("ignore", message=".*_get_pg_default_device.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="Multiple backends are registered", category=UserWarning)
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # A meta tensor is assigned, not copied into, once per name: tied names would each get their own copy.
    for name, shared in ties:
        owner, attr = _owner(model, name)
        owner._parameters[attr] = model.get_parameter(shared)
    left = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"rank {world.rank}: {len(left)} tensors were not sent from rank 0, e.g. {left[:3]}")
    if world.main:
        log.info(
            "FSDP2 loading: the weights rank 0 read were sent to the shards of %d ranks (the others built it on the meta device)",
            world.size,
        )


def shard_from_rank0(world: World, model: torch.nn.Module, device: torch.device, checkpoint=None) -> None:
    """Steps 1 to 3 (see the module doc) on a PEFT model whose base rank 0 loaded and the other ranks built on
    the meta device; ``checkpoint``: a checkpoint folder whose adapter rank 0 loads first (a resumed run)."""
    from kielo.train import checkpoint as ckpt
    from kielo.train.fsdp import shard_model

    if checkpoint is not None and world.main:  # whole tensors into whole parameters, before they are split
        ckpt.load_adapter_weights(model, checkpoint)
    full = share_layout(world, model, device)
    shard_model(model)
    fill_from_rank0(world, model, full)
