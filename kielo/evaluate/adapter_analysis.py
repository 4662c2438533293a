"""What a LoRA adapter changed: per layer and module, the size and shape of its weight update.

For each adapted linear layer the update is ``ΔW = scale · B A`` (``scale`` = alpha/r, or alpha/sqrt(r)
with rsLoRA). Reported:
- ``relative``: ``||ΔW||_F / ||W||_F``, with the base weight W dequantized when it is stored in 4 or 8 bits
  (an update's size only means something next to the weight it changes);
- the singular values of ΔW and its effective rank (Roy & Vetterli: exp of the entropy of the normalized
  singular values; r when all directions are used equally, 1 when one dominates) and the rank that holds
  90% of the update's energy;
- which modules changed most, and the mean relative change per layer and per module type.

ΔW is never formed: its singular values are those of the r x r matrix ``R_B R_Aᵀ`` from the QR
factorizations ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``, so a large layer costs O((in + out) r²). DoRA's
magnitude vector is not included: the numbers describe the low-rank direction update only.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
ENERGY = 0.9


def lora_singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of ``b @ a`` (b: out x r, a: r x in), descending, without forming the product."""
    _, r_b = torch.linalg.qr(b.float())
    _, r_a = torch.linalg.qr(a.float().T)
    return torch.linalg.svdvals(r_b @ r_a.T)


def effective_rank(s: torch.Tensor) -> float:
    """exp(entropy of s / sum(s)); 0 for an all-zero update."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(-(p * p.log()).sum()))


def energy_rank(s: torch.Tensor, share: float = ENERGY) -> int:
    """The fewest singular directions that hold ``share`` of the squared norm."""
    e = s.double() ** 2
    total = float(e.sum())
    if total <= 0:
        return 0
    return int((torch.cumsum(e, 0) / total < share - 1e-12).sum()) + 1


def base_weight(layer) -> torch.Tensor:
    """The layer's weight in floating point; 4/8-bit bitsandbytes weights are dequantized (a copy)."""
    weight = layer.weight
    kind = type(weight).__name__
    if kind == "Params4bit":
        from kielo.model.load import dequantize_4bit_weight

        return dequantize_4bit_weight(layer).float()
    if kind == "Int8Params":
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(weight, state=layer.state).float()
    return weight.detach().float()


def _layer_and_kind(name: str) -> tuple[int | None, str]:
    found = _LAYER.search(name)
    return (int(found.group(1)) if found else None), name.rsplit(".", 1)[-1]


@torch.no_grad()
def analyze_adapter(model, adapter: str = "default", top: int = 10) -> dict:
    """Per-module update statistics of one adapter of a PEFT model, with summaries.

    Returns ``{"modules": [...], "by_layer": {...}, "by_kind": {...}, "top": [...], "parameters": n,
    "rank": r, "scale": s}``; each module row has ``module, layer, kind, rank, scale, update_norm,
    weight_norm, relative, effective_rank, energy_rank, singular_values``.
    """
    rows = []
    params = 0
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter not in lora_a:
            continue
        a = lora_a[adapter].weight
        b = module.lora_B[adapter].weight
        scale = float(module.scaling[adapter])
        params += a.numel() + b.numel()
        s = lora_singular_values(a, b) * abs(scale)
        update = float(torch.linalg.vector_norm(s))  # ||ΔW||_F = sqrt(sum of squared singular values)
        weight = float(torch.linalg.vector_norm(base_weight(module.get_base_layer())))
        layer, kind = _layer_and_kind(name.replace("base_model.model.", "", 1))
        rows.append(
            {
                "module": name.replace("base_model.model.", "", 1),
                "layer": layer,
                "kind": kind,
                "rank": int(a.shape[0]),
                "scale": scale,
                "update_norm": update,
                "weight_norm": weight,
                "relative": update / weight if weight > 0 else None,
                "effective_rank": effective_rank(s),
                "energy_rank": energy_rank(s),
                "singular_values": [float(x) for x in s],
            }
        )
    by_layer, by_kind = defaultdict(list), defaultdict(list)
    for r in rows:
        if r["relative"] is not None:
            by_kind[r["kind"]].append(r["relative"])
            if r["layer"] is not None:
                by_layer[r["layer"]].append(r["relative"])
    ranked = sorted((r for r in rows if r["relative"] is not None), key=lambda r: -r["relative"])
    return {
        "adapter": adapter,
        "modules": rows,
        "parameters": params,
        "rank": rows[0]["rank"] if rows else None,
        "scale": rows[0]["scale"] if rows else None,
        "by_layer": {str(k): sum(v) / len(v) for k, v in sorted(by_layer.items())},
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "mean_relative": sum(r["relative"] for r in ranked) / len(ranked) if ranked else None,
        "mean_effective_rank": sum(r["effective_rank"] for r in rows) / len(rows) if rows else None,
        "top": [{k: r[k] for k in ("module", "relative", "update_norm", "weight_norm", "effective_rank")} for r in ranked[:top]],
    }
