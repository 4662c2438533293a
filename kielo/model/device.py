"""Where a model runs and in which dtype its matmuls compute: ``training.device`` and
``quantization.compute_dtype`` resolved for this machine."""

from __future__ import annotations

import os

import torch

from kielo.config.schema import QuantizationConfig
from kielo.errors import KieloError

# quantization.compute_dtype's names; `auto` resolves per device in compute_dtype.
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in COMPUTE_DTYPES.items()}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present; asking for CUDA on a machine without it is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise KieloError("training.device is `cuda` but no CUDA GPU is available", "use --training.device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # One GPU per process in a distributed run (torchrun, accelerate launch, kielo train --nproc).
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def compute_dtype(q: QuantizationConfig, device: torch.device) -> torch.dtype:
    """Resolve ``quantization.compute_dtype``; CPUs get fp32 by default (bf16 matmuls are slow on most)."""
    if q.compute_dtype != "auto":
        if device.type == "cpu" and q.compute_dtype == "fp16":
            raise KieloError("fp16 compute is not supported on CPU", "use --quantization.compute_dtype bf16 or fp32")
        return COMPUTE_DTYPES[q.compute_dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
