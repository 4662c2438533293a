"""Fold a LoRA adapter into the unquantized base and save an ordinary HF model folder.

The folder is what any transformers-based server loads with plain ``AutoModelForCausalLM.from_pretrained``:
safetensors weights and config, the tokenizer with the training prompt format as ``chat_template``, and a
generation config that stops at the trained end token.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from kielo.errors import KieloError

log = logging.getLogger(__name__)


def adapter_moved(adapter_dir: str) -> bool:
    """Whether training changed the adapter at all (LoRA B starts at zero, so an untrained adapter is a no-op)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return True  # a .bin adapter: can't tell cheaply; the verification still measures its effect
    with safe_open(str(path), "pt") as f:
        return any(f.get_tensor(k).abs().max() > 0 for k in f.keys() if "lora_B" in k)


def adapter_summary(adapter_dir: str) -> dict:
    """What the report says about the adapter: rank, scaling, targets."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    scaling = alpha / (r**0.5 if cfg.get("use_rslora") else r) if r and alpha else None
    targets = cfg.get("target_modules")
    return {
        "path": adapter_dir,
        "r": r,
        "alpha": alpha,
        "scaling": scaling,
        "use_rslora": cfg.get("use_rslora", False),
        "use_dora": cfg.get("use_dora", False),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
    }


def _expected_update(layer, adapter: str, cfg: dict) -> torch.Tensor | None:
    """``scaling * B @ A`` computed here, from the adapter's own config: independent of PEFT's merge code.

    None where that formula isn't the whole update (DoRA and other variants, per-module alphas).
    """
    if adapter in getattr(layer, "lora_variant", {}) or cfg.get("alpha_pattern") or cfg.get("rank_pattern"):
        return None
    a = layer.lora_A[adapter].weight.float()
    b = layer.lora_B[adapter].weight.float()
    r = a.shape[0]
    update = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r) * (b @ a)
    return update.T if getattr(layer, "fan_in_fan_out", False) else update


@torch.no_grad()
def merge_adapter(peft_model, adapter_dir: str) -> tuple[torch.nn.Module, dict]:
    """Merge layer by layer (W <- W + scaling * B @ A) and check every merged weight; returns the plain model.

    Each adapted weight must equal ``W + update`` with the update computed independently (within the
    rounding of the dtype the merge computes in). The report's ``update_error`` says, per storable dtype, how
    much storing the merged weights in it would change the update (norm of the rounding error over the norm
    of the update, all adapted weights together): an update below the weight's rounding step vanishes in 16
    bits. :mod:`kielo.merge.storage` chooses and judges the stored dtype from it.
    """
    from peft.tuners.lora import LoraLayer

    from kielo.merge.dequantize import DTYPES

    if any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in peft_model.modules()):
        raise KieloError(
            "refusing to merge into quantized (4/8-bit) weights: the update would be rounded away",
            "merge into the unquantized base (kielo merge loads it for you)",
        )
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    worst, bad, checked, unchecked, update_sq = 0.0, None, 0, [], 0.0
    rounding_sq = dict.fromkeys(DTYPES, 0.0)
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer) or layer.merged:
            continue
        adapter = layer.active_adapters[0]
        weight = layer.get_base_layer().weight
        before = weight.detach().float().clone()
        update = _expected_update(layer, adapter, cfg)
        try:
            layer.merge(safe_merge=True)
        except ValueError as e:
            raise KieloError(f"merging the adapter failed at {name}: {e}", "the run diverged; use an earlier checkpoint") from None
        if update is None:
            unchecked.append(name)
            continue
        want = before + update
        # Within two rounding steps of the compute dtype: summation order and the one rounding of the sum.
        bound = 2 * torch.finfo(weight.dtype).eps * (before.abs() + update.abs()) + torch.finfo(torch.float32).tiny
        err = float(((weight.float() - want).abs() / bound).max())
        if err > worst:
            worst, bad = err, name
        for key, dtype in DTYPES.items():
            rounding_sq[key] += float((want.to(dtype).float() - want).pow(2).sum())
        update_sq += float(update.pow(2).sum())
        checked += 1
    model = peft_model.unload()  # the LoRA modules out, the merged base layers back in their place
    report = {
        "adapted_weights": checked,
        "unchecked": unchecked,
        "max_error_in_rounding_steps": worst / 2,
        "update_error": {k: math.sqrt(v / update_sq) if update_sq else 0.0 for k, v in rounding_sq.items()},
        "passed": worst <= 1.0,
    }
    if not report["passed"]:
        raise KieloError(
            f"the merged weights are wrong: {bad} differs from W + scaling * B @ A by {worst / 2:.3g} rounding steps",
            "this is a bug (or an adapter edited after training): re-run with --debug and report it",
        )
    return model, report


def save_merged(model, bundle, folder: Path, dtype: torch.dtype) -> None:
    """Write the merged model in ``dtype`` and its side files (tokenizer + template, generation config, config)."""
    from kielo.runs.folder import write_side_files

    model.to(dtype).save_pretrained(folder, safe_serialization=True)  # the one rounding of W + update
    # After the model: save_pretrained writes the base's generation_config.json, which this replaces.
    write_side_files(bundle, folder)
