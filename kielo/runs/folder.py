"""A run folder's layout and everything written into it.

output_dir/
  adapter_config.json, adapter_model.safetensors   the final adapter (PEFT's format)
  tokenizer files, generation_config.json           side files: the tokenizer with the training template
  kielo_config.yaml                                 the resolved config the run trained with
  metrics.jsonl, tensorboard/                       the training curve (kielo.runs.metrics)
  summary.json                                      written last: the run finished
  checkpoints/step-N/                               adapter, side files and trainer_state.pt
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from kielo.config.load import save_config
from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.runs.saved import CHECKPOINTS, SUMMARY_FILE, saved_config

ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


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

    def guard(self, resume: bool) -> None:
        """Never overwrite a finished or running run by accident."""
        if resume:
            return
        if (self.path / SUMMARY_FILE).exists() or list_checkpoints(self.path) or (self.path / ADAPTER_FILE).exists():
            raise KieloError(
                f"{self.path} already holds a training run",
                "pass --resume to continue it, or choose another --output_dir",
            )

    def resume_point(self) -> Path:
        """The newest checkpoint to resume from; an error when there is none."""
        found = list_checkpoints(self.path)
        if not found:
            raise KieloError(f"--resume: {self.path} has no checkpoint to resume from", "start without --resume")
        return found[-1]

    def saved_config(self) -> Config | None:
        """The config the run saved when it started (None for a folder without one)."""
        return saved_config(self.path)

    def write_config(self, config: Config) -> None:
        """Save the resolved config the run trains with."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.path)

    def write_final(self, bundle, model) -> None:
        """Write adapter + side files through a temporary folder, then move them in (no half-written adapter)."""
        tmp = self.path / ".final-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        write_side_files(bundle, tmp)
        for f in tmp.iterdir():
            target = self.path / f.name
            if target.is_dir():
                shutil.rmtree(target)
            f.replace(target)
        tmp.rmdir()

    def write_summary(self, summary: dict) -> None:
        """summary.json, written last: its presence says the run finished."""
        (self.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
