"""Everything a command needs about one model: tokenizer, template, encoder, model, device.

Training, evaluation and generation all build their model through here, so they share one prompt format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from kielo.config.load import from_dict
from kielo.config.schema import Config, DataConfig
from kielo.data.encode import Encoder
from kielo.data.template import Template, resolve_template
from kielo.errors import KieloError
from kielo.model.device import pick_device
from kielo.model.source import ModelSource, resolve_adapter, resolve_model

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    model: torch.nn.Module
    tokenizer: object
    template: Template
    encoder: Encoder
    device: torch.device
    source: ModelSource
    config: Config
    adapter: str | None = None


def run_format(data: DataConfig, saved: Config) -> DataConfig:
    """``data`` with a saved run's prompt format: its template unless one was asked for (`auto` is the default, so
    it asks for nothing) and its system prompt unless one is given. The template decides the end token too."""
    template = saved.data.template if data.template == "auto" else data.template
    return replace(data, template=template, system_prompt=data.system_prompt or saved.data.system_prompt)


def effective_config(config: Config) -> tuple[Config, ModelSource]:
    """When ``model.name`` is a run folder, its saved config supplies the model and the data format; when
    training starts from a run folder's adapter (``lora.init_from``), that run's data format (what the adapter
    learnt to answer in). The returned config is a new one (``config`` is left as it was)."""
    source = resolve_model(config.model.name)
    if source.run_config:
        saved = from_dict(source.run_config)
        config = replace(config, model=saved.model, data=run_format(config.data, saved))
    elif config.lora.init_from:
        _, run_config = resolve_adapter(config.lora.init_from)
        if run_config:
            data = run_format(config.data, from_dict(run_config))
            if data != config.data:
                log.info("lora.init_from %s: its run's prompt format (data.template %s) is used", config.lora.init_from, data.template)
            config = replace(config, data=data)
    return config, source


def load_tokenizer_and_template(config: Config, source: ModelSource):
    from kielo.model.load import load_tokenizer

    tok = load_tokenizer(source.path, config.model.trust_remote_code)
    return tok, resolve_template(tok, config.data.template)


def make_encoder(tokenizer, template: Template, config: Config) -> Encoder:
    return Encoder(tokenizer, template, config.data.max_length, config.data.overlong, config.data.train_on_prompt)


def load_bundle(config: Config, for_training: bool, adapter: str | None = None, weights: bool = True) -> Bundle:
    """Load tokenizer, template and (quantized) base model; attach ``adapter`` or the run folder's adapter.
    ``weights=False``: the model on the meta device, for a rank that receives its weights from rank 0."""
    from kielo.model.adapter import load_adapter
    from kielo.model.load import load_base_model, load_model_config, warn_untrained_template_tokens
    from kielo.model.precision import resolve_hardware, resolved_precision

    config, source = effective_config(config)
    device = pick_device(config.training.device)
    precision = None
    if for_training:
        # Device, dtypes and kernels become concrete here, before the weights load in them; the bundle's
        # config says what this model trains with.
        config = resolve_hardware(config, load_model_config(source, config.model.trust_remote_code).model_type, device)
        precision = resolved_precision(config)
    tokenizer, template = load_tokenizer_and_template(config, source)
    model = load_base_model(source, config, device, for_training=for_training, precision=precision, weights=weights)
    if weights:
        warn_untrained_template_tokens(model, tokenizer, template.chat_template)
    adapter = adapter or source.adapter
    if adapter:
        if for_training:
            raise KieloError("training on top of an existing adapter is not supported", "train from the base model")
        path, _ = resolve_adapter(adapter)
        model = load_adapter(model, path)
        model.eval()
    encoder = make_encoder(tokenizer, template, config)
    return Bundle(model, tokenizer, template, encoder, device, source, config, adapter)


def load_variants(config: Config, adapters: list[str]) -> tuple[Bundle, list[str]]:
    """One base model with several adapters loaded side by side, for comparisons.

    Returns the bundle and the variant names: ``"base"`` first, then one per adapter (its folder name,
    made unique). Switch between them with :func:`use_variant`; the base weights are loaded once.
    """
    from pathlib import Path

    from kielo.model.adapter import load_adapter
    from kielo.model.load import load_base_model

    config, source = effective_config(config)
    device = pick_device(config.training.device)
    tokenizer, template = load_tokenizer_and_template(config, source)
    model = load_base_model(source, config, device, for_training=False)
    paths = ([source.adapter] if source.adapter else []) + list(adapters)
    names: list[str] = ["base"]
    for path in paths:
        resolved, _ = resolve_adapter(path)
        name = Path(resolved).name.replace(".", "_") or "adapter"
        # PEFT stores adapters as attributes: a name like `train` or `base_model` would clash with one.
        while name in names or hasattr(model, name):
            name += "_"
        if len(names) == 1:
            model = load_adapter(model, resolved, name=name)
        else:
            try:
                model.load_adapter(resolved, adapter_name=name)
            except (RuntimeError, ValueError, KeyError) as e:
                raise KieloError(
                    f"the adapter in {resolved} does not fit this base model ({str(e)[:200]})",
                    "compare adapters trained on the same base",
                ) from None
        names.append(name)
    model.eval()
    encoder = make_encoder(tokenizer, template, config)
    return Bundle(model, tokenizer, template, encoder, device, source, config), names


class use_variant:
    """Context manager: run ``bundle.model`` as the base (``"base"``) or with one named adapter."""

    def __init__(self, bundle: Bundle, name: str):
        self.bundle, self.name = bundle, name
        self._ctx = None

    def __enter__(self) -> Bundle:
        model = self.bundle.model
        if self.name == "base":
            if hasattr(model, "disable_adapter"):
                self._ctx = model.disable_adapter()
                self._ctx.__enter__()
        else:
            model.set_adapter(self.name)
        return self.bundle

    def __exit__(self, *exc) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
