"""Attach a new LoRA adapter (PEFT) to a base model, load a saved one, or find the base model inside one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kielo.config.schema import LoraConfig
from kielo.errors import KieloError

log = logging.getLogger(__name__)


def causal_lm(model):
    """The transformers CausalLM inside a (PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def add_lora(model, lora: LoraConfig, forward: str = "fused"):
    """Wrap ``model`` with a trainable LoRA adapter configured by ``lora.*``. ``forward`` (see
    ``kielo.train.step.LORA_FORWARDS``): "fused" and "unfused" compute the LoRA branches in the stream's dtype
    (``kielo.model.lora_forward``), with or without the fused 4-bit + LoRA node; "peft" keeps peft's forward."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, peft_config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if "Linear" in type(m).__name__})
        raise KieloError(
            f"lora.target_modules {lora.target_modules!r} does not fit this model: {e}",
            f"use `all-linear` or names from this model's linear layers: {', '.join(names)}",
        ) from None
    if forward != "peft":
        from kielo.model.lora_forward import lora_in_input_dtype

        lora_in_input_dtype(peft_model, fused=forward == "fused")
    return peft_model


def load_adapter(model, adapter_dir: str, trainable: bool = False, name: str = "default"):
    """Load a saved PEFT adapter onto ``model``; a shape mismatch (adapter of another base) is a clear error."""
    from peft import PeftModel

    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise KieloError(f"{adapter_dir} holds no adapter_config.json", "point to a kielo run folder or PEFT adapter")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable, adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as e:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        raise KieloError(
            f"the adapter in {adapter_dir} does not fit this base model ({str(e).splitlines()[0][:200]})",
            f"load it with the base it was trained on{f' ({base})' if base else ''}",
        ) from None


def init_adapter_settings(lora: LoraConfig) -> LoraConfig:
    """``lora`` with the saved adapter's own settings when training starts from one (``lora.init_from``): the
    adapter's shape decides them, so the run's saved config and model card say what was trained."""
    if not lora.init_from:
        return lora
    from dataclasses import replace

    from kielo.model.source import resolve_adapter

    path, _ = resolve_adapter(lora.init_from)
    saved = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    targets = saved.get("target_modules")
    settings = {
        "r": saved.get("r", lora.r),
        "alpha": saved.get("lora_alpha", lora.alpha),
        "dropout": saved.get("lora_dropout", lora.dropout),
        "target_modules": sorted(targets) if isinstance(targets, (list, set)) else targets or lora.target_modules,
        "bias": saved.get("bias", lora.bias),
        "use_rslora": bool(saved.get("use_rslora", lora.use_rslora)),
        "use_dora": bool(saved.get("use_dora", lora.use_dora)),
        "init_from": path,
    }
    changed = {k: v for k, v in settings.items() if getattr(lora, k) != v and k != "init_from"}
    if changed:
        log.info("lora.init_from %s: the adapter's own settings replace the config's: %s", path, changed)
    return replace(lora, **settings)


def start_adapter(model, lora: LoraConfig, forward: str = "fused"):
    """The trainable adapter a run starts with: a new one (:func:`add_lora`), or the saved one ``lora.init_from``
    names, loaded trainable, with the same LoRA forward."""
    if not lora.init_from:
        return add_lora(model, lora, forward)
    from kielo.model.source import resolve_adapter

    path, _ = resolve_adapter(lora.init_from)
    peft_model = load_adapter(model, path, trainable=True)
    if forward != "peft":
        from kielo.model.lora_forward import lora_in_input_dtype

        lora_in_input_dtype(peft_model, fused=forward == "fused")
    log.info("training starts from the adapter in %s", path)
    return peft_model
