"""Memory and disk checks that run before a merge loads or writes anything.

A merge holds one unquantized copy of the model at a time (plus the reference logits it checks against)
and writes the safetensors folder, optionally an NF4 copy and a GGUF file. Running out of either halfway
would waste the user's time and, on disk, leave a partial model; so both are estimated from the model's
config (no weights loaded) and compared with what is free.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from kielo.errors import KieloError

log = logging.getLogger(__name__)

GIB = 2**30
SLACK = 1.05  # headroom on top of the estimates (metadata, tokenizer, report)


def logits_bytes(n_sequences: int, max_tokens: int, vocab_size: int, dtype: torch.dtype) -> int:
    """Working memory for the reference logits kept for comparison (one row per token and sequence)."""
    return n_sequences * max_tokens * vocab_size * torch.finfo(dtype).bits // 8


def output_bytes(
    model_config, dtype: torch.dtype, gguf_bytes_per_weight: float | None, requantize: bool, tokenizer_bytes: int
) -> dict[str, int]:
    """Estimated bytes of every file group the merge writes."""
    from kielo.model.load import estimate_weight_bytes

    weights = estimate_weight_bytes(model_config, 0, dtype)
    sizes = {"safetensors": weights, "tokenizer": tokenizer_bytes}
    if gguf_bytes_per_weight is not None:
        n_params = weights // (torch.finfo(dtype).bits // 8)
        sizes["gguf"] = int(n_params * gguf_bytes_per_weight) + 2 * tokenizer_bytes
    if requantize:
        sizes["nf4"] = estimate_weight_bytes(model_config, 4, dtype) + tokenizer_bytes
    return sizes


def check_disk(folder: Path, sizes: dict[str, int]) -> int:
    """Fail when the filesystem holding ``folder`` lacks room for ``sizes``; returns the bytes needed."""
    need = int(sum(sizes.values()) * SLACK)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        parts = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in sizes.items())
        raise KieloError(
            f"not enough disk space in {probe}: the merge writes about {need / GIB:.2f} GiB ({parts}) "
            f"but only {free / GIB:.2f} GiB is free",
            "free some space or pass --output_dir on a larger disk (leaving out --gguf / --requantize writes less)",
        )
    return need


def check_memory(model_config, dtype: torch.dtype, device: torch.device, name: str, working_bytes: int) -> None:
    """Fail when one unquantized copy of the model (plus the working memory) can't fit on ``device``."""
    from kielo.model.load import check_fits

    # On a GPU the reference logits are kept in host memory, which is rarely the constraint there.
    extra = working_bytes if device.type == "cpu" else 0
    check_fits(
        model_config,
        0,
        dtype,
        device,
        name,
        fix="merging needs one unquantized copy of the model: use a machine with more memory, --dtype bf16 "
        "instead of fp32, or fewer --samples",
        extra_bytes=extra,
    )
