"""Settings that would silently do nothing in this run, found once the run's step count is known.

A warning, not an error: the run is still valid (a short trial run of a long config is a normal thing to
do), but a person who set ``eval_every: 500`` on a 200-step run should learn before training that no
validation will happen in between, not from the curve afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from kielo.config.schema import Config, TrainingConfig

log = logging.getLogger(__name__)

_DEFAULTS = {f.name: f.default for f in fields(TrainingConfig)}


def dead_settings(config: Config, steps: int, has_validation: bool) -> list[str]:
    """One sentence (naming the key and the fix) per setting of ``config`` that has no effect in a run of
    ``steps`` optimizer steps, with or without validation data."""
    t = config.training
    found = []
    if t.warmup_steps and t.warmup_steps >= steps:
        found.append(
            f"training.warmup_steps {t.warmup_steps} >= the run's {steps} steps: the learning rate never gets past "
            f"warmup, so the {t.scheduler} schedule never runs; lower warmup_steps (e.g. {max(1, steps // 10)})"
        )
    if t.eval_every and not has_validation:
        found.append(
            f"training.eval_every {t.eval_every} is set but there is no validation data, so nothing is evaluated; "
            "set data.validation or data.validation_split"
        )
    elif t.eval_every and t.eval_every >= steps:
        found.append(
            f"training.eval_every {t.eval_every} >= the run's {steps} steps: validation runs only at the start and "
            "the end, as with eval_every 0; lower it to see the curve in between"
        )
    if t.save_every and t.save_every >= steps:
        found.append(
            f"training.save_every {t.save_every} >= the run's {steps} steps: no checkpoint is written before the "
            "final adapter, so an interrupted run starts over; lower save_every"
        )
    if not t.save_every and t.keep_last != _DEFAULTS["keep_last"]:
        found.append(
            f"training.keep_last {t.keep_last} has no effect with save_every 0 (no checkpoints are written); set training.save_every"
        )
    if t.max_steps and t.epochs != _DEFAULTS["epochs"]:
        found.append(
            f"training.epochs {t.epochs:g} is ignored: training.max_steps {t.max_steps} decides the run's length; "
            "set max_steps 0 to train by epochs"
        )
    return found


def warn_dead_settings(config: Config, steps: int, has_validation: bool) -> list[str]:
    """Log a warning for each of :func:`dead_settings` (before the first step) and return them."""
    found = dead_settings(config, steps, has_validation)
    for sentence in found:
        log.warning("%s", sentence)
    return found
