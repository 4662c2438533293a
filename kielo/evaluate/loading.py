"""Load the models to evaluate, after checking that every adapter was trained on this kind of base.

PEFT loads an adapter onto any base whose adapted layers have the same shapes, so an adapter trained on
one architecture can load silently onto another of the same width and give meaningless numbers. The
adapter records its base (``base_model_name_or_path``); when that folder is at hand, its architecture is
compared with the base in use before anything is loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.evaluate.settings import GenerationChoice, resolve_generation
from kielo.model.bundle import Bundle, effective_config, load_bundle, load_variants
from kielo.model.source import ModelSource, resolve_adapter

log = logging.getLogger(__name__)

# config.json fields that must agree for an adapter to belong to a base.
ARCHITECTURE_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


def _model_config(path: str) -> dict | None:
    folder = Path(path)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return None


def _describe(cfg: dict) -> str:
    return f"{cfg.get('model_type', '?')}, hidden size {cfg.get('hidden_size', '?')}, {cfg.get('num_hidden_layers', '?')} layers"


def check_adapter_base(adapter_dir: str, base: ModelSource) -> None:
    """Fail with a clear message when ``adapter_dir`` was trained on a base of another architecture."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    recorded = cfg.get("base_model_name_or_path")
    theirs = _model_config(recorded) if recorded else None
    ours = _model_config(base.path)
    if theirs is None or ours is None:
        log.debug("adapter %s: base %s not at hand; shapes are checked when loading", adapter_dir, recorded)
        return
    differ = [f for f in ARCHITECTURE_FIELDS if f in theirs and f in ours and theirs[f] != ours[f]]
    if differ:
        raise KieloError(
            f"the adapter in {adapter_dir} was trained on {recorded} ({_describe(theirs)}), not on this base "
            f"{base.path} ({_describe(ours)}): {', '.join(f'{f} {theirs[f]} vs {ours[f]}' for f in differ)}",
            f"evaluate it with --model {recorded}, or pass an adapter trained on {base.path}",
        )


def resolve(
    config: Config, adapters: list[str], chosen_generation: Collection[str] | None = None
) -> tuple[Config, ModelSource, list[str], GenerationChoice]:
    """Resolve the base and every adapter to load, checking each, before any weights are read.

    A run folder given as the model supplies its base, prompt format and system prompt (the returned
    config has them, as :func:`~kielo.model.bundle.effective_config` gives) and its adapter, which comes first.
    The adapters' runs supply the prompt format and the generation settings (except the ``chosen_generation``
    keys, see :func:`~kielo.evaluate.settings.resolve_generation`); the choice says where each came from.
    """
    template_chosen = config.data.template != "auto"
    config, source = effective_config(config)
    resolved = [resolve_adapter(a) for a in adapters]
    paths = ([source.adapter] if source.adapter else []) + [path for path, _ in resolved]
    for path in paths:
        check_adapter_base(path, source)
    runs = ({source.adapter: source.run_config} if source.adapter and source.run_config else {}) | {p: r for p, r in resolved if r}
    config = apply_prompt_format(config, runs)
    choice = resolve_generation(config.generation, runs, chosen_generation)
    trained = {(r.get("data") or {}).get("template", "auto") for r in runs.values()} - {"auto"}
    template_from = choice.chosen_by if template_chosen else "the run's config" if trained else "the default (auto)"
    choice = replace(choice, template_from=template_from)
    log.info("generation: %s", choice.describe())
    return replace(config, generation=choice.settings), source, paths, choice


def apply_prompt_format(config: Config, runs: dict[str, dict]) -> Config:
    """Evaluate adapters in the prompt format they were trained with (their run folders' saved config).

    With ``data.template: auto`` (the default) the adapters' template and system prompt are used; adapters
    trained with different formats can't share one and are an error. An explicit template that differs from
    an adapter's is kept, with a warning: the numbers then measure the adapter outside its training format.
    """
    formats = {
        path: ((run.get("data") or {}).get("template", "auto"), (run.get("data") or {}).get("system_prompt"))
        for path, run in runs.items()
    }
    templates = {t for t, _ in formats.values()}
    if config.data.template == "auto" and templates:
        if len(templates) > 1:
            raise KieloError(
                "the adapters were trained with different prompt formats: "
                + ", ".join(f"{Path(p).name}: {t}" for p, (t, _) in formats.items()),
                "compare adapters trained with the same data.template, or force one with --data.template builtin|chat",
            )
        config = replace(config, data=replace(config.data, template=templates.pop()))
        log.info("prompt format of the adapters' training run: data.template %s", config.data.template)
    else:
        for path, (template, _) in formats.items():
            if template not in ("auto", config.data.template):
                log.warning("%s was trained with data.template %s but is evaluated with %s", path, template, config.data.template)
    prompts = {sp for _, sp in formats.values()}
    if config.data.system_prompt is None and len(prompts) == 1:
        config = replace(config, data=replace(config.data, system_prompt=prompts.pop()))
    return config


def load_one(config: Config, adapter: str | None) -> Bundle:
    """The resolved base, with ``adapter`` when given."""
    return load_bundle(config, for_training=False, adapter=adapter)


def load_all(config: Config, adapters: list[str]) -> tuple[Bundle, list[str], dict[str, str]]:
    """The resolved base once with every adapter beside it: bundle, variant names (``"base"`` first), name -> path."""
    bundle, names = load_variants(config, adapters)
    return bundle, names, dict(zip(names[1:], adapters, strict=True))
