"""Load a model for inference: a base, a base + adapter, or a kielo run folder."""

from __future__ import annotations

from dataclasses import replace

from kielo.config.load import load_config
from kielo.model.bundle import Bundle, load_bundle


def load_model(model: str, adapter: str | None = None, config=None, **overrides) -> Bundle:
    """A ready-to-generate :class:`Bundle`.

    ``model`` is anything ``--model`` accepts (a run folder brings its base, adapter and prompt format);
    ``adapter`` adds a LoRA adapter; ``overrides`` are dotted config keys (``{"quantization.bits": 0}``).
    """
    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    cfg = config if config is not None else load_config(overrides={"model.name": model, **overrides})
    if config is not None:
        cfg = replace(cfg, model=replace(cfg.model, name=model))
    return load_bundle(cfg, for_training=False, adapter=adapter)
