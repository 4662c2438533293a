"""Which dtype the merged weights are stored in, and whether storing them keeps the adapter's update.

A LoRA update ``scaling * B @ A`` is small against the weight it is added to. Storing ``W + update`` rounds
it once to the saved dtype's step at ``|W|``: the part of the update below that step is lost (or doubled).
bf16 keeps 8 significant bits, fp16 11, fp32 24; so bf16's error is about 8 times fp16's, and fp32's is
negligible. fp16 buys those bits with range: nothing above 65504.

``--dtype auto`` (the default) measures, then picks:

- **fp16** when every merged weight, and every activation of base + adapter on the sample prompts, is below
  :data:`FP16_LIMIT` in absolute value, and fp16 changes the update by at most :data:`MAX_UPDATE_ERROR` of
  its norm;
- **fp32** otherwise (fp32's range is bf16's, and it keeps the update whole).

bf16 is never picked: wherever fp16 fits, fp16 keeps the update 8 times better; where it doesn't, fp32 keeps
it and bf16 would not. ``--dtype bf16`` still writes bf16 when asked, and the verdict says what it cost.

The verdict: a merge whose stored weights change the update by more than :data:`MAX_UPDATE_ERROR` of its
norm fails, whichever dtype was chosen, and so does fp16 asked for a model whose weights or sample activations
overflow it (the folder is written, the report says FAIL, the CLI exits 1).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from kielo.merge.dequantize import DTYPES
from kielo.merge.options import AUTO_DTYPE, MAX_UPDATE_ERROR

FP16_MAX = float(torch.finfo(torch.float16).max)
# Half of fp16's range, not all of it: the activations are measured on a few sample prompts only, and other
# inputs (longer ones, other topics) reach further; a factor of 2 is the headroom for them, and keeps a weight
# within one doubling (a norm's ``1 + w``, a product with an input above 1) finite. Measured: Gemma 3 270M's
# residual stream reaches 1.04e5 (layer 14) on the demo's prompts, beyond fp16 itself, so auto stores it in fp32;
# its largest weight is 1656. The tiny test models peak at 4-52.
FP16_LIMIT = FP16_MAX / 2


@dataclass
class Peak:
    """The largest absolute value seen, and where."""

    value: float = 0.0
    where: str = ""

    def see(self, value: float, where: str) -> None:
        """Keep ``value`` if it is the largest so far; NaN (an overflow upstream) counts as the largest and stays."""
        if not math.isnan(self.value) and (math.isnan(value) or value > self.value):
            self.value, self.where = value, where


def weight_peak(model: torch.nn.Module) -> Peak:
    """The largest absolute value among the model's floating-point parameters (all of them are stored)."""
    peak = Peak()
    for name, p in model.named_parameters():
        if p.dtype.is_floating_point:
            peak.see(float(p.detach().abs().max()), name)
    return peak


@contextlib.contextmanager
def activation_peak(model: torch.nn.Module):
    """Within the block, record the largest absolute value any module of ``model`` outputs."""
    peak = Peak()

    def hook(name):
        def record(module, args, output):
            first = output[0] if isinstance(output, (tuple, list)) else getattr(output, "logits", output)
            if isinstance(first, torch.Tensor) and first.dtype.is_floating_point and first.numel():
                peak.see(float(first.detach().abs().max()), name)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        yield peak
    finally:
        for h in handles:
            h.remove()


def choose(update_error: dict[str, float], weights: Peak, activations: Peak) -> tuple[str, str]:
    """The ``auto`` rule (see the module docstring): ``(dtype name, why)``."""
    for what, peak in (("weight", weights), ("activation", activations)):
        if not peak.value < FP16_LIMIT:
            return "fp32", f"fp16 can't hold it: {what} {peak.where} reaches {peak.value:.4g} (fp16 limit {FP16_LIMIT:g})"
    if update_error["fp16"] > MAX_UPDATE_ERROR:
        return "fp32", f"fp16 would change the update by {100 * update_error['fp16']:.1f}% (more than {100 * MAX_UPDATE_ERROR:g}%)"
    return "fp16", (
        f"weights and activations within fp16's range (peaks {weights.value:.3g} and {activations.value:.3g}), "
        f"fp16 changes the update by {100 * update_error['fp16']:.1f}%"
    )


def failure(chosen: str, update_error: dict[str, float], weights: Peak, activations: Peak) -> str | None:
    """Why storing in ``chosen`` fails the verdict, or None: too much of the update lost, or fp16 overflowed."""
    if chosen == "fp16":
        for what, peak in (("weight", weights), ("activation", activations)):
            if not peak.value < FP16_MAX:
                return f"overflows: {what} {peak.where} reaches {peak.value:.4g}, beyond fp16's {FP16_MAX:g}"
    error = update_error[chosen]
    if not error <= MAX_UPDATE_ERROR:
        return f"changes the adapter's update by {100 * error:.1f}% of its norm (at most {100 * MAX_UPDATE_ERROR:g}% allowed)"
    return None


def storage_report(
    requested: str, chosen: str, why: str | None, update_error: dict[str, float], weights: Peak, activations: Peak
) -> dict:
    """The report's ``storage`` section: the dtype, why, what each dtype does to the update, and the verdict."""
    failed = failure(chosen, update_error, weights, activations)
    report = {
        "requested": requested,
        "dtype": chosen,
        "update_error": {k: update_error[k] for k in DTYPES},
        "max_update_error": MAX_UPDATE_ERROR,
        "weight_peak": {"value": weights.value, "where": weights.where},
        "activation_peak": {"value": activations.value, "where": activations.where},
        "passed": failed is None,
    }
    if failed:
        report["failure"] = failed
    if requested == AUTO_DTYPE:
        report["why"] = why
    return report
