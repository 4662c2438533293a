"""Activation checkpointing with the checkpointed layers' inputs kept in pinned CPU memory.

With checkpointing every decoder layer keeps only its input for the backward pass, but all of them at once:
layers x tokens x width in the stream's dtype (Llama-3.1-8B, 4,096 tokens a micro-batch: 32 x 32 MiB = 1 GiB,
a seventh of the whole step's peak). Here each layer's input is copied to pinned host memory on a side CUDA
stream while the layer computes, and copied back in the backward pass, one layer ahead of the recomputation
(the next layer down is prefetched while this one recomputes), so at most two layer inputs are on the GPU.

Why not what the ecosystem has: transformers' ``activation_checkpointing_enable(offload=True)`` wraps torch's
checkpoint in ``torch.autograd.graph.save_on_cpu``; with the non-reentrant checkpoint kielo uses the layer
input is held by the recomputation's closure, not saved through the hooks, so nothing moves, and with the
reentrant one ``save_on_cpu`` copies synchronously on the compute stream (the host waits for every layer).

The recomputation is reentrant, as torch's ``use_reentrant=True`` checkpoint: the layer runs again under
``enable_grad`` on the restored input and its own backward runs inside this node's, so LoRA dropout gets the
same masks from the restored RNG state. Off CUDA the input stays where it is (nothing to gain), which keeps
the bookkeeping (which layer prefetches which) the same for the CPU tests.
"""

from __future__ import annotations

import weakref

import torch


class _Chain:
    """One model's side stream, and the layer that ran last in the current forward pass with its output: when
    the next layer's input is that output, the two are neighbours, and the backward of the upper one prefetches
    the lower one's input."""

    def __init__(self) -> None:
        self.stream: torch.cuda.Stream | None = None
        self.last = None  # the _Stored input of the layer that ran last
        self.last_output = None  # weakref to that layer's output
        self.prefetched = 0  # inputs copied back ahead of their layer's recomputation (tests read it)

    def side(self, device: torch.device) -> torch.cuda.Stream | None:
        if device.type != "cuda":
            return None
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        return self.stream


class _Stored:
    """A layer input kept for the backward pass: in pinned host memory on CUDA (copied on the side stream),
    as it is elsewhere; ``load`` gives it back on its device, ``prefetch`` starts that copy early."""

    def __init__(self, tensor: torch.Tensor, stream: torch.cuda.Stream | None, below: _Stored | None) -> None:
        self.device, self.requires_grad, self.stream, self.below = tensor.device, tensor.requires_grad, stream, below
        self.back: torch.Tensor | None = None
        if stream is None:
            self.host = tensor
            return
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(stream):
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
        tensor.record_stream(stream)  # the caching allocator must not reuse it before the copy has read it

    def prefetch(self) -> bool:
        """Start copying the input back (once); whether this call started it."""
        if self.back is not None or self.host is None:
            return False
        if self.stream is None:
            self.back = self.host
            return True
        back = torch.empty(self.host.shape, dtype=self.host.dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            back.copy_(self.host, non_blocking=True)
        back.record_stream(self.stream)
        self.back = back
        return True

    def load(self) -> torch.Tensor:
        self.prefetch()
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        back, self.back, self.host = self.back, None, None
        self.below = None
        return back


class OffloadedCheckpoint(torch.autograd.Function):
    """``run(hidden)``, keeping only ``hidden`` for backward, off the GPU (see the module's docstring)."""

    @staticmethod
    def forward(ctx, run, chain: _Chain, hidden: torch.Tensor):
        ctx.run, ctx.chain = run, chain
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        chained = chain.last_output is not None and chain.last_output() is hidden
        ctx.stored = _Stored(hidden, chain.side(hidden.device), chain.last if chained else None)
        with torch.no_grad():
            out = run(hidden)
        first = out[0] if isinstance(out, tuple) else out  # BLOOM's blocks return (hidden, attention weights)
        chain.last, chain.last_output = ctx.stored, weakref.ref(first)
        return out

    @staticmethod
    def backward(ctx, *grads):
        stored = ctx.stored
        below = stored.below
        hidden = stored.load()
        if below is not None and below.prefetch():  # the layer below copies in while this one recomputes
            ctx.chain.prefetched += 1
        hidden = hidden.detach().requires_grad_(stored.requires_grad)
        cuda = hidden.is_cuda
        with torch.random.fork_rng(devices=[hidden.device] if cuda else [], device_type="cuda" if cuda else "cpu"):
            torch.set_rng_state(ctx.cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(ctx.cuda_rng, hidden.device)
            with torch.enable_grad():
                out = ctx.run(hidden)
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=False) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        ctx.stored = None
        return None, None, hidden.grad


def offloaded_checkpoint_function(model):
    """A ``_gradient_checkpointing_func`` for ``model``'s decoder layers: ``(layer_forward, hidden, *rest)``.

    transformers calls it with the layer's forward (its keyword arguments bound) and the positional ones; a
    layer given more than the hidden states positionally is checkpointed by torch's own non-reentrant
    checkpoint instead.
    """
    from torch.utils.checkpoint import checkpoint

    chain = _Chain()

    def run(function, *args):
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            return checkpoint(function, *args, use_reentrant=False)
        return OffloadedCheckpoint.apply(function, chain, args[0])

    run.chain = chain
    return run


# training.checkpoint_offload auto turns it on from this width: there a layer's compute hides its input's two
# PCIe copies. Measured on an H100 (bench/NOTES.md): Llama-3.1-8B (4,096 wide) 0.2-0.3% slower for 0.72 GiB less;
# Gemma 3 1B (1,152) 6% slower.
AUTO_OFFLOAD_WIDTH = 4096


def offload_on(training, device_type: str, width: int, host_bytes: int | None = None) -> bool:
    """Whether a run with ``training`` (its checkpoint_offload, gradient_checkpointing, distributed) on a
    ``device_type`` device keeps checkpointed layer inputs in host memory, for a model ``width`` wide.

    ``host_bytes``: the pinned host memory the inputs would take in this process (:func:`offloaded_bytes`);
    auto stays off where that is over :func:`host_room`, so a long-row run of a large model does not pin most of
    the host's memory. None (``kielo plan`` for another machine) skips that check."""
    if not training.gradient_checkpointing or training.checkpoint_offload == "off":
        return False
    if training.checkpoint_offload == "on":
        return True
    wide = device_type == "cuda" and training.distributed != "fsdp" and width >= AUTO_OFFLOAD_WIDTH
    return wide and (host_bytes is None or host_bytes <= host_room())


def offloaded_bytes(n_layers: int, tokens: int, width: int, stream_bytes: int) -> int:
    """Host bytes of every checkpointed layer input of one micro-batch of ``tokens`` positions."""
    return n_layers * tokens * width * stream_bytes


def host_room() -> int:
    """Host memory auto lets one process pin for its layer inputs: a quarter of what is available now, shared
    by the training processes of this host (torchrun's LOCAL_WORLD_SIZE)."""
    import os

    import psutil

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return int(psutil.virtual_memory().available) // (4 * local)


def offloading(model) -> bool:
    """Whether ``model``'s decoder layers checkpoint through the offloading function (:func:`set_checkpoint_offload`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return any(
        hasattr(getattr(m, "_gradient_checkpointing_func", None), "chain")
        for m in model.modules()
        if isinstance(m, GradientCheckpointingLayer)
    )


def model_width(model_config) -> int:
    """The residual stream's width of a transformers config (a multimodal one's text tower)."""
    return int(getattr(_text(model_config), "hidden_size", 0) or getattr(_text(model_config), "n_embd", 0) or 0)


def model_layers(model_config) -> int:
    """The decoder layers of a transformers config (a multimodal one's text tower)."""
    return int(getattr(_text(model_config), "num_hidden_layers", 0) or getattr(_text(model_config), "n_layer", 0) or 0)


def _text(model_config):
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def set_checkpoint_offload(model, on: bool) -> int:
    """Give every decoder layer of ``model`` the offloading checkpoint (``on``) or torch's non-reentrant one
    back; returns how many layers. Whether a layer is checkpointed at all stays as it was."""
    import functools

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    func = offloaded_checkpoint_function(model) if on else functools.partial(checkpoint, use_reentrant=False)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer._gradient_checkpointing_func = func
    return len(layers)
