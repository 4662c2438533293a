"""A 16-bit (or fp32) copy of the base model, loaded from its original weights: what an adapter is merged into.

Training kept the base in 4-bit NF4. Merging into those weights (PEFT dequantizes, adds the delta and
quantizes again) rounds the adapter's small update into 4-bit steps and silently loses much of it
(transformers#31293, peft#2321). Dequantizing the NF4 weights and merging into that is no better: the
base would carry the quantization error it never had. So the base is read again, unquantized, from its
own checkpoint, in the dtype the merged model is saved in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from kielo.errors import KieloError
from kielo.merge.options import DTYPE_NAMES
from kielo.model.source import ModelSource

log = logging.getLogger(__name__)

DTYPES = dict(zip(DTYPE_NAMES, (torch.bfloat16, torch.float16, torch.float32), strict=True))


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise KieloError(f"--dtype {name!r} is not supported", f"use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def check_unquantized(source: ModelSource) -> None:
    """Refuse a base whose checkpoint is itself quantized (bitsandbytes, GPTQ, AWQ...): there is no 16-bit original."""
    cfg_file = Path(source.path) / "config.json"
    if not cfg_file.is_file():
        return  # a hub id: checked by transformers when it loads
    quant = json.loads(cfg_file.read_text(encoding="utf-8")).get("quantization_config")
    if quant:
        raise KieloError(
            f"the base {source.path} is stored quantized ({quant.get('quant_method', 'unknown method')}); merging "
            "into quantized weights loses the adapter's update",
            "pass --model with the unquantized (16-bit) release of the same base",
        )


def compute_dtype_for(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the models compute in while merging and checking.

    On a GPU, the merged dtype, as inference will run it. On a CPU, float32: most CPUs have no fast 16-bit
    matmul (here a bf16 matrix-vector product took 40x as long as fp32), and generation is made of those.
    Upcasting 16-bit weights to fp32 is exact, so the weights compared are the very same; the merge adds
    in fp32 and rounds once, when saving. The caller falls back to the dtype itself when fp32 won't fit.
    """
    return dtype if device.type == "cuda" else torch.float32


def load_base_16bit(
    source: ModelSource, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False, compute: torch.dtype | None = None
):
    """The base model unquantized, its weights rounded to ``dtype``, held in ``compute`` (default ``dtype``)."""
    from transformers import AutoModelForCausalLM

    check_unquantized(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        )
    except (OSError, ValueError) as e:
        raise KieloError(
            f"cannot load the base model {source.path}: {str(e).splitlines()[0]}",
            "check --model (or the run's model.name); hub ids need network access",
        ) from None
    if compute is not None and compute != dtype:
        model = model.to(compute)  # exact: every 16-bit value is a float32 value
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
