"""The config a run trains with, resolved once before the first step and never changed after.

The load (:func:`kielo.model.bundle.load_bundle` for training) has already made the device, compute dtype,
stream dtype and kernel set concrete, since the weights load in them. What is left needs the loaded model
and the encoded data: the memory plan's micro-batch and checkpointing picks, or, for a resumed run, the
micro-batch settings it saved. The result is what the run folder saves as kielo_config.yaml.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kielo.config.schema import Config
from kielo.data.encode import Encoded
from kielo.model.adapter import init_adapter_settings
from kielo.model.load import set_gradient_checkpointing
from kielo.model.precision import resolve_hardware
from kielo.plan.planner import MemoryPlan, apply_plan, plan_memory

log = logging.getLogger(__name__)


def planned_item(item):
    """What the memory plan sizes for one training item: an encoded example, or for a preference pair its two
    rows as one of their summed length (activations and the loss head grow with the tokens in the micro-batch)."""
    if hasattr(item, "chosen"):
        return Encoded(item.chosen.input_ids + item.rejected.input_ids, item.chosen.labels + item.rejected.labels, 0, 0)
    return item


def resolve_training(bundle, items: list, saved: Config | None = None, gpus: int = 1) -> tuple[Config, MemoryPlan | None]:
    """The resolved config of a run on ``bundle`` (a training :class:`~kielo.model.bundle.Bundle`) over the
    encoded training ``items`` (a run of ``gpus`` processes: planned per GPU), and the memory plan (None when
    none was made: off the GPU, ``training.memory_plan: off``, or resumed); the model's gradient
    checkpointing is switched to match.

    A resumed run (``saved``: the run folder's config) keeps its saved micro-batch settings, because a
    checkpoint's position in the data is counted in micro-batches of that size.
    """
    config = resolve_hardware(bundle.config, bundle.model.config.model_type, bundle.device)
    config = replace(config, lora=init_adapter_settings(config.lora))
    t = config.training
    plan = None
    if saved is not None:
        s = saved.training
        kept = (s.micro_batch_size, s.gradient_accumulation, s.gradient_checkpointing)
        if kept != (t.micro_batch_size, t.gradient_accumulation, t.gradient_checkpointing):
            log.info(
                "resuming with the run's saved micro_batch_size %d, gradient_accumulation %d, gradient "
                "checkpointing %s (the checkpoint's data position is counted in those micro-batches)",
                *kept,
            )
        planned = replace(
            t,
            micro_batch_size=s.micro_batch_size,
            gradient_accumulation=s.gradient_accumulation,
            gradient_checkpointing=s.gradient_checkpointing,
        )
        config = replace(config, training=planned)
    elif bundle.device.type == "cuda" and t.memory_plan != "off":
        plan = plan_memory(config, bundle.model.config, [planned_item(it) for it in items], bundle.device, gpus)
        config = apply_plan(config, plan)
    from kielo.model.offload import offloading

    # The load set the configured checkpointing, and checkpoint_offload for the widest micro-batch the config
    # allows; the plan decides both for this run's rows (its estimate counts what it chose).
    loaded_with = offloading(bundle.model)
    offload = bool(plan.offloaded) if plan is not None else loaded_with
    if config.training.gradient_checkpointing != t.gradient_checkpointing or offload != loaded_with:
        set_gradient_checkpointing(bundle.model, config.training.gradient_checkpointing, offload)
    return config, plan
