"""Checkpoints: adapter, optimizer, scheduler, RNG and data position, written atomically.

A checkpoint is first written to a hidden temporary folder and then renamed into place, so a crash never
leaves a half-written ``step-N`` behind; old checkpoints are removed only after the new one exists, their
state file first, so a checkpoint half removed no longer counts as one. What a kill leaves behind (temporary
folders, half-removed checkpoints) is cleared by the next run in the folder
(:meth:`kielo.runs.folder.RunFolder.clear_leftovers`).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch

# The layout comes from the run layer; list_checkpoints is re-exported for the loop and its tests.
from kielo.runs.folder import ADAPTER_FILE, STATE_FILE, TMP_PREFIX, checkpoints_dir, list_checkpoints
from kielo.runs.writes import writing
from kielo.train.faults import fault_point
from kielo.train.resume_state import rng_state

__all__ = ["list_checkpoints", "load_adapter_weights", "load_state", "prune_checkpoints", "save_checkpoint"]


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _write_state(path: Path, data: bytes) -> None:
    """Written by Python (a full disk is an OSError naming ENOSPC, not torch's 'unexpected pos') and synced
    before the rename that publishes the checkpoint. The fault point sits halfway through the bytes."""
    with open(path, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        fault_point("checkpoint-state", path)
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler,
    extra: dict,
    write_side_files,
    adapter_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically; ``write_side_files(folder)`` adds config and tokenizer.
    ``adapter_state`` / ``optimizer_state``: the adapter's weights and the optimizer's state when they are not
    the live model's and optimizer's own (a sharded model's, gathered: :mod:`kielo.train.fsdp`).

    ``extra`` holds plain types only: the state file loads with ``torch.load(..., weights_only=True)``.
    A failed write (disk full, read-only folder) is a KieloError; the earlier checkpoints stay as they were.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}{step}-{os.getpid()}"
    earlier = list_checkpoints(output_dir)
    keep = f"the previous checkpoint ({earlier[-1].name})" if earlier else ""
    try:
        with writing(root, f"checkpoint step-{step}", keep):
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, **({"state_dict": adapter_state} if adapter_state is not None else {}))
            fault_point("checkpoint-adapter", tmp / ADAPTER_FILE)
            write_side_files(tmp)
            fault_point("checkpoint-side-files", tmp)
            state = {
                "step": step,
                "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                **extra,
            }
            _write_state(tmp / STATE_FILE, _state_bytes(state))
            fault_point("checkpoint-rename", final)
            if final.exists():  # a stale checkpoint of the same step from an earlier attempt
                shutil.rmtree(final)
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("checkpoint-renamed", final)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Remove all but the newest ``keep_last`` checkpoints, and never ``protect`` (the last good one)."""
    for old in list_checkpoints(output_dir)[:-keep_last]:
        if protect is not None and old.resolve() == Path(protect).resolve():
            continue
        (old / STATE_FILE).unlink()  # first: from here on it is no checkpoint, whatever happens next
        fault_point("prune", old)
        shutil.rmtree(old, ignore_errors=True)


def load_state(checkpoint: Path) -> dict:
    """The trainer state of a checkpoint: tensors and plain types only, so no pickle runs on loading it."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy a checkpoint's adapter weights into the live PEFT model (keeps the optimizer's tensors)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint / ADAPTER_FILE))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} has weights this model lacks: {unexpected[:3]}")
