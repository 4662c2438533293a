"""Generation settings for `kielo prompt`: the training run's defaults, then what the user asks for.

Layers, lowest first: the schema defaults; the ``generation:`` section saved by the training run(s) named
as ``--model`` or ``--adapter`` (later ones win, so the last-named model's run has the last word); keys
set by ``--config`` or ``--generation.*`` flags; the command's short flags (``--temperature 0.7``). A
config flag can't be told apart from an untouched default when it equals the schema default, so such a
value leaves the run's default in place; the short flags always win. Every layer is validated by the
one schema (:mod:`kielo.config.schema`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from kielo.config.load import from_dict
from kielo.config.schema import GenerationConfig
from kielo.runs.saved import find_run_config, has_adapter, read_run_config

log = logging.getLogger(__name__)

KEYS = tuple(f.name for f in fields(GenerationConfig))


def with_values(g: GenerationConfig, values: dict[str, Any]) -> GenerationConfig:
    """``g`` with some keys changed, validated like any config (errors name ``generation.<key>``)."""
    return from_dict({"generation": {**asdict(g), **values}}).generation


def run_defaults(names: list[str]) -> dict[str, Any]:
    """The ``generation:`` sections saved by those of ``names`` that are kielo run folders, merged in order."""
    merged: dict[str, Any] = {}
    for name in names:
        p = Path(name).expanduser()
        if not has_adapter(p):
            continue  # a base model, a plain hub id, or a path load_variants will report
        run = read_run_config(p)
        if run is None:
            continue
        saved = run.get("generation") or {}
        known = {k: v for k, v in saved.items() if k in KEYS}  # runs saved by other kielo versions may differ
        if known:
            log.info("generation defaults from the training run %s", find_run_config(p).parent)
        merged.update(known)
    return merged


def resolve_generation(configured: GenerationConfig, models: list[str], flags: dict[str, Any]) -> GenerationConfig:
    """The settings to generate with: run defaults < non-default configured values < ``flags`` (short flags)."""
    schema = asdict(GenerationConfig())
    explicit = {k: v for k, v in asdict(configured).items() if v != schema[k]}
    return with_values(GenerationConfig(), {**run_defaults(models), **explicit, **flags})


def describe(g: GenerationConfig) -> str:
    """One line for reports: ``greedy, max_new_tokens=96, ...``."""
    parts = ["greedy" if g.temperature <= 0 else f"temperature={g.temperature}, top_p={g.top_p}, top_k={g.top_k}, seed={g.seed}"]
    parts.append(f"max_new_tokens={g.max_new_tokens}")
    if g.repetition_penalty != 1:
        parts.append(f"repetition_penalty={g.repetition_penalty}")
    if g.stop:
        parts.append(f"stop={g.stop!r}")
    return ", ".join(parts)
