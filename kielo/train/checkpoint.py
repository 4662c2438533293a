"""Checkpoints: adapter, optimizer, scheduler, RNG and data position, written atomically.

A checkpoint is first written to a hidden temporary folder and then renamed into place, so a crash never
leaves a half-written ``step-N`` behind; old checkpoints are removed only after the new one exists.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

# The layout comes from the run layer; list_checkpoints is re-exported for the loop and its tests.
from kielo.runs.folder import STATE_FILE, checkpoints_dir, list_checkpoints

__all__ = ["list_checkpoints", "load_adapter_weights", "load_state", "prune_checkpoints", "save_checkpoint", "set_rng_state"]


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict, write_side_files) -> Path:
    """Write ``checkpoints/step-{step}`` atomically; ``write_side_files(folder)`` adds config and tokenizer."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_side_files(tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra},
        tmp / STATE_FILE,
    )
    if final.exists():  # a stale checkpoint of the same step from an earlier attempt
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` checkpoints."""
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_state(checkpoint: Path) -> dict:
    # Our own file: it holds optimizer tensors and RNG states (numpy arrays), hence weights_only=False.
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy a checkpoint's adapter weights into the live PEFT model (keeps the optimizer's tensors)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} has weights this model lacks: {unexpected[:3]}")
