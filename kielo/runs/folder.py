"""A run folder's layout and everything written into it.

output_dir/
  adapter_config.json, adapter_model.safetensors   the final adapter (PEFT's format)
  tokenizer files, generation_config.json           side files: the tokenizer with the training template
  kielo_config.yaml                                 the resolved config the run trained with
  README.md                                         the model card (kielo.runs.card), in checkpoints too
  metrics.jsonl                                     the training curve (kielo.runs.metrics)
  tensorboard/, mlruns/, wandb/                     trackers named by training.report_to (kielo.runs.trackers)
  summary.json                                      written last: the run finished
  checkpoints/step-N/                               adapter, side files and trainer_state.pt
  .kielo.lock                                       held by the run writing the folder (kielo.runs.lock)

The run's own writes go through :func:`kielo.runs.writes.writing`: a full disk is one message, not a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from kielo.config.load import save_config
from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.runs.saved import CHECKPOINTS, SUMMARY_FILE, read_summary, saved_config
from kielo.runs.writes import writing

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-step-"  # a checkpoint being written: checkpoints/.tmp-step-N-PID
FINAL_TMP = ".final-tmp"  # the final adapter being written, in the run folder


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(checkpoint: Path) -> int:
    """The step a ``checkpoints/step-N`` folder was written at."""
    return int(STEP_DIR.match(checkpoint.name).group(1))


def write_side_files(bundle, folder: Path) -> None:
    """Tokenizer with the training template, generation config naming the end token, resolved config:
    what makes an adapter folder usable on its own (``bundle``: a :class:`kielo.model.bundle.Bundle`)."""
    from transformers import GenerationConfig

    tok = bundle.tokenizer
    tok.chat_template = bundle.template.chat_template
    tok.save_pretrained(folder)
    eos = [bundle.template.end_token_id]
    if tok.eos_token_id is not None and tok.eos_token_id not in eos:
        eos.append(tok.eos_token_id)
    g = bundle.config.generation
    GenerationConfig(
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        max_new_tokens=g.max_new_tokens,
        do_sample=g.temperature > 0,
        **({"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k} if g.temperature > 0 else {}),
        repetition_penalty=g.repetition_penalty,
    ).save_pretrained(folder)
    save_config(bundle.config, folder)


class RunFolder:
    """One training run's output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def check(self, resume: bool) -> Path | None:
        """What the folder holds against what was asked; returns the checkpoint to resume from (None for a
        new run). Never overwrite a run by accident: a finished run (``summary.json``) is neither overwritten
        nor resumed, an unfinished one (checkpoints, no summary) is continued only with ``--resume``, and
        ``--resume`` needs a checkpoint."""
        found = list_checkpoints(self.path)
        last = found[-1] if found else None
        if (self.path / SUMMARY_FILE).exists():
            steps = _finished_steps(self.path)
            raise KieloError(
                f"{self.path} holds a finished training run ({steps} steps)" + ("; there is nothing to resume" if resume else ""),
                "choose another --output_dir; to train longer, start a new run there with a larger --training.max_steps "
                "(the learning-rate schedule spans the whole run, so a finished run is not extended in place)",
            )
        if resume:
            if last is None:
                raise KieloError(f"--resume: {self.path} has no checkpoint to resume from", "start without --resume")
            return last
        if last is not None:
            raise KieloError(
                f"{self.path} holds an unfinished training run (last checkpoint: {last.name})",
                "pass --resume to continue it, or choose another --output_dir",
            )
        if (self.path / ADAPTER_FILE).exists():
            raise KieloError(
                f"{self.path} holds an adapter but neither a checkpoint nor a summary (a run without checkpoints, interrupted)",
                "choose another --output_dir, or remove that folder's files to train there from the start",
            )
        return None

    def clear_leftovers(self) -> list[str]:
        """Remove what an interrupted run left: temporary checkpoint and final folders, and checkpoints half
        pruned (no state file). Call only while holding the folder's lock: a live run's temporary folder is
        its work in progress."""
        gone = []
        final_tmp = self.path / FINAL_TMP
        if final_tmp.is_dir():
            shutil.rmtree(final_tmp)
            gone.append(FINAL_TMP)
        root = checkpoints_dir(self.path)
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            if p.is_dir() and (p.name.startswith(TMP_PREFIX) or (STEP_DIR.match(p.name) and not (p / STATE_FILE).is_file())):
                shutil.rmtree(p)
                gone.append(p.name)
        if gone:
            log.info("removed what an interrupted run left in %s: %s", self.path, ", ".join(gone))
        return gone

    def saved_config(self) -> Config | None:
        """The config the run saved when it started (None for a folder without one)."""
        return saved_config(self.path)

    def write_config(self, config: Config) -> None:
        """Save the resolved config the run trains with."""
        with writing(self.path, "the run's config"):
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(config, self.path)

    def write_final(
        self,
        bundle,
        model,
        midway: Callable[[Path], object] | None = None,
        card: Callable[[Path], object] | None = None,
        adapter_state: dict | None = None,
    ) -> None:
        """Write adapter + side files through a temporary folder, then move them in (no half-written adapter).

        A run killed while moving them in has no summary.json yet, so it counts as unfinished and ``--resume``
        writes them again. ``midway(file)`` runs once some files have moved and others not (a fault point);
        ``card(folder)`` writes the model card into the temporary folder, over PEFT's template; ``adapter_state``:
        the adapter's weights when they are not the live model's own (gathered from a sharded model)."""
        tmp = self.path / FINAL_TMP
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(self.path, "the final adapter", "the last checkpoint"):
            model.save_pretrained(tmp, **({"state_dict": adapter_state} if adapter_state is not None else {}))
            write_side_files(bundle, tmp)
            if card is not None:
                card(tmp)
            for i, f in enumerate(sorted(tmp.iterdir())):
                if i == 1 and midway is not None:
                    midway(f)
                target = self.path / f.name
                if target.is_dir():
                    shutil.rmtree(target)
                f.replace(target)
            tmp.rmdir()

    def write_summary(self, summary: dict) -> None:
        """summary.json, written last: its presence says the run finished."""
        with writing(self.path, SUMMARY_FILE):
            (self.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")


def _finished_steps(folder: Path) -> str:
    try:
        return str(read_summary(folder)["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"
