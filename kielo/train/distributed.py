"""Data-parallel training over torch.distributed: which process this is, and the few collectives a step needs.

A run is distributed when ``WORLD_SIZE`` > 1 in the environment, as ``torchrun``, ``accelerate launch`` and
``kielo train --nproc N`` (:mod:`kielo.train.launch`) set it. Every rank holds the 4-bit base and the LoRA;
an optimizer step's micro-batches are those of the single-process run, dealt out to the ranks (rank r takes
micro-batches r, r + N, ...), so the union of examples per step is the single-process step's.

The LoRA gradients are summed with one explicit ``all_reduce`` of a flat buffer per optimizer step instead
of wrapping the model in ``DistributedDataParallel``. Why: (1) each micro-batch's loss is divided by the
trained tokens of the whole step on every rank (the count is all-reduced first), so the sum of the ranks'
gradients is the single-process gradient; DDP averages, which would have to be undone by a factor of N;
(2) with gradient accumulation DDP needs ``no_sync`` on all but the last micro-batch, and with
checkpointing that recomputes the LoRA layers its hooks can fire twice for one parameter unless
``static_graph`` is set; (3) DDP broadcasts every parameter and buffer at construction, 4-bit weights
included, where only the LoRA needs to agree. LoRA gradients are small (Llama-3.1-8B, r16, all linear
layers: 42M values, 168 MB in fp32), so one collective after backward costs little next to a step's
seconds; DDP's overlap of the reduction with backward would save at most that.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

from kielo.errors import KieloError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, metrics and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def micro_offsets(self, gradient_accumulation: int) -> range:
        """Which of an optimizer step's micro-batches (0 .. gradient_accumulation-1) this rank computes."""
        return range(self.rank, gradient_accumulation, self.size)


SINGLE = World()


def world_from_env() -> World:
    """The world the launcher (torchrun, accelerate launch, kielo --nproc) describes in the environment."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return SINGLE
    rank = int(os.environ.get("RANK", "0"))
    return World(rank, size, int(os.environ.get("LOCAL_RANK", str(rank))))


def check_accumulation(world: World, gradient_accumulation: int) -> None:
    """Each rank must compute as many micro-batches per step as every other one (they meet in collectives)."""
    if world.active and gradient_accumulation % world.size:
        raise KieloError(
            f"training.gradient_accumulation = {gradient_accumulation} cannot be split over {world.size} processes",
            f"set --training.gradient_accumulation to a multiple of {world.size}: each optimizer step's "
            f"micro-batches are dealt out to the processes",
        )


def init_world(device_name: str = "auto") -> World:
    """Join the process group the environment describes (gloo on CPU, nccl on CUDA); SINGLE when alone."""
    import torch.distributed as dist

    world = world_from_env()
    if not world.active or dist.is_initialized():
        return world
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if cuda else "gloo"
    if not cuda:
        # N processes on one machine's cores: torch's default of one thread per core in each would oversubscribe
        # them (measured: 2 ranks on 2 cores, a tiny model's 3-step run took 26 s instead of 16 s).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world.size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    # A rank that dies (kill -9) leaves the others waiting in a collective; the launcher ends them, and the
    # timeout bounds the wait where no launcher does.
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=datetime.timedelta(minutes=30))
    log.info("rank %d of %d joined the process group (%s)", world.rank, world.size, backend)
    return world


def shutdown(world: World) -> None:
    import torch.distributed as dist

    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """The device collectives take tensors on."""
    import torch.distributed as dist

    # nccl reduces CUDA tensors only; gloo CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_values(world: World, *values: float) -> list[float]:
    """The sums of ``values`` over all ranks (float64, so token counts stay exact)."""
    if not world.active:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_gradients(world: World, params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over the ranks (one flat all_reduce; see the module doc)."""
    if not world.active:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:  # a rank whose micro-batches never reached a layer still adds its zero
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(comm_device())
    dist.all_reduce(flat)
    at = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[at : at + n].view_as(g))
        at += n


def broadcast_parameters(world: World, params: list[torch.nn.Parameter]) -> None:
    """Rank 0's values into every rank's ``params`` (the LoRA starts identical everywhere)."""
    if not world.active:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            t = p.detach().to(comm_device())
            dist.broadcast(t, 0)
            p.copy_(t)


def broadcast_object(world: World, obj):
    """Rank 0's ``obj`` on every rank (picklable values)."""
    if not world.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def gather_objects(world: World, obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def any_rank(world: World, flag: bool) -> bool:
    """True when ``flag`` is true on any rank: decisions that end the loop are taken by all ranks together."""
    return bool(sum_values(world, float(flag))[0]) if world.active else flag
