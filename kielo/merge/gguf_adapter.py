"""The LoRA adapter alone as a GGUF file, for llama.cpp's ``--lora`` on a GGUF of the base.

The format is that of llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and per adapted weight ``<gguf name>.lora_a`` (r x in) and
``.lora_b`` (out x r). llama.cpp scales the update by alpha / r, so an rsLoRA adapter (alpha / sqrt(r)) is
written with alpha * sqrt(r). The layout changes the model export makes are row operations on the
weights (Llama's rotary permutation, BLOOM's q/k/v regrouping), so they apply to B alone.

transformers can't load adapter GGUFs, so the file is checked by reading it back with gguf-py: every
update ``alpha / r * B @ A`` rebuilt from the file must equal the PEFT adapter's update in llama.cpp's
layout, under a tensor name the merged model's GGUF has. Whether llama.cpp then applies it is up to
llama.cpp (``llama-cli -m base.gguf --lora adapter.gguf``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from kielo.merge.gguf_export import _encode, _qtype, arch_spec

log = logging.getLogger(__name__)

PREFIX = "base_model.model."


def _problems(cfg: dict, keys: list[str]) -> list[str]:
    problems = []
    if cfg.get("use_dora"):
        problems.append("DoRA adapters have no llama.cpp format")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("per-module ranks or alphas (llama.cpp reads one alpha)")
    if cfg.get("modules_to_save") or cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        problems.append("trained biases or fully trained modules")
    if any("lora_embedding" in k for k in keys):
        problems.append("LoRA on embeddings")
    return problems


def _pairs(adapter_dir: str) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(Path(adapter_dir) / "adapter_model.safetensors")).items():
        module, _, rest = key.removeprefix(PREFIX).partition(".lora_")
        pairs.setdefault(module, {})[rest[0]] = t.float()  # "A.weight" / "B.weight"
    return pairs


def write_gguf_adapter(adapter_dir: str, model_config, path: Path, kind: str) -> dict:
    """Write the adapter in ``adapter_dir`` as a llama.cpp LoRA GGUF; returns what was written, or why not."""
    import gguf

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        return {"skipped": "the adapter is not in safetensors format"}
    pairs = _pairs(adapter_dir)
    problems = _problems(cfg, list(pairs))
    if problems:
        return {"skipped": "; ".join(problems)}
    spec = arch_spec(model_config)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, model_config.num_hidden_layers)
    r = cfg["r"]
    alpha = cfg["lora_alpha"] * (math.sqrt(r) if cfg.get("use_rslora") else 1.0)
    writer = gguf.GGUFWriter(str(path), spec.gguf_arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        written = 0
        for module, ab in sorted(pairs.items()):
            gguf_name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
            if gguf_name is None:
                return {"skipped": f"no llama.cpp name for the adapted module {module}"}
            b = spec.tensor(f"{module}.weight", ab["B"], model_config)
            for side, t in (("a", ab["A"]), ("b", b)):
                writer.add_tensor(f"{gguf_name}.lora_{side}", _encode(t, kind), raw_dtype=_qtype(kind))
            written += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"file": path.name, "type": kind, "alpha": alpha, "r": r, "adapted_weights": written, "bytes": path.stat().st_size}


def verify_gguf_adapter(path: Path, adapter_dir: str, model_config, model_gguf: Path | None) -> dict:
    """Rebuild every update from the file and compare it with the PEFT adapter's, in llama.cpp's layout."""
    import gguf
    from gguf import GGUFReader, dequantize

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    r = cfg["r"]
    scaling = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
    spec = arch_spec(model_config)
    reader = GGUFReader(str(path))
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    stored = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)) for t in reader.tensors}
    known = {t.name for t in GGUFReader(str(model_gguf)).tensors} if model_gguf else None
    pairs = _pairs(adapter_dir)
    worst, scale, unnamed = 0.0, 0.0, []
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, model_config.num_hidden_layers)
    for module, ab in pairs.items():
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        want = spec.tensor(f"{module}.weight", scaling * ab["B"] @ ab["A"], model_config)
        got = alpha / r * stored[f"{name}.lora_b"] @ stored[f"{name}.lora_a"]
        worst = max(worst, float((got - want).abs().max()))
        scale = max(scale, float(want.abs().max()))
        if known is not None and name not in known:
            unnamed.append(name)
    # Relative to the largest update entry: f16 storage of A and B keeps ~3 significant digits.
    relative = worst / scale if scale else 0.0
    return {
        "max_abs_update_diff": worst,
        "max_abs_update": scale,
        "relative_diff": relative,
        "names_in_model_gguf": not unnamed,
        "status": "gguf-py-verified (llama.cpp not run)",
        "passed": relative <= 1e-2 and not unnamed,
    }
