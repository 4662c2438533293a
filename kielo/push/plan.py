"""What `kielo push` uploads: the files of a run folder (adapter, tokenizer with the training template, config,
summary, model card) and an optional GGUF, with their paths in the repository, decided without a network.

The card is the run's README.md as training wrote it: its metadata block (``library_name: peft``, base model,
licence) already is the hub's, so the hub lists the adapter under its base model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from kielo.errors import KieloError
from kielo.runs.card import CARD_FILE
from kielo.runs.saved import ADAPTER_CONFIG, SUMMARY_FILE, read_run_config

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Beside the adapter: what loading it with transformers + peft or with kielo needs, and the run's record.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
    "kielo_config.yaml",
    SUMMARY_FILE,
    "metrics.jsonl",
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class UploadPlan:
    """The repository, its visibility, the files (path in the repo -> local path) and the card's text."""

    repo: str
    private: bool
    files: dict[str, Path] = field(default_factory=dict)
    card: str = ""

    def describe(self) -> dict:
        """The plan as plain data (what --dry_run prints)."""
        return {
            "repo": self.repo,
            "private": self.private,
            "files": {k: str(v) for k, v in self.files.items()},
            "card_bytes": len(self.card.encode("utf-8")),
        }


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise KieloError(f"GGUF file {path} does not exist", "pass a file written by kielo merge --gguf")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise KieloError(f"{path} is not a GGUF file (no GGUF magic at its start)", "pass a file written by kielo merge --gguf")


def plan_upload(run: str | Path, repo: str, private: bool = False, gguf: str | Path | None = None) -> UploadPlan:
    """The :class:`UploadPlan` of run folder ``run`` to hub repository ``repo``: errors name what is wrong
    (not a run folder, no finished adapter, a damaged one, a bad repository id or GGUF)."""
    from kielo.model.source import check_adapter_files

    folder = Path(run).expanduser()
    if not REPO_ID.match(repo):
        raise KieloError(f"--repo {repo!r} is not a hub repository id", "write it as org/name (or user/name)")
    if not folder.is_dir():
        raise KieloError(f"{folder} is not a folder", "pass the output_dir of a kielo train run")
    config = read_run_config(folder)
    if config is None:
        raise KieloError(f"{folder} is not a kielo run folder (no kielo_config.yaml)", "pass the output_dir of a kielo train run")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise KieloError(
            f"{folder} holds no finished adapter ({ADAPTER_CONFIG})",
            f"let the run finish (kielo train ... --output_dir {folder} --resume), or push one of its checkpoints/step-N",
        )
    check_adapter_files(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise KieloError(f"{folder} has no model card ({CARD_FILE})", "finish the run with kielo train, which writes it")
    plan = UploadPlan(repo=repo, private=private)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CARD_FILE, *SIDE_FILES):
        if (folder / name).is_file():
            plan.files[name] = folder / name
    plan.card = card_path.read_text(encoding="utf-8")
    if not plan.card.startswith("---\n"):
        log.warning("%s has no metadata block: the hub will not link the adapter to its base model", card_path)
    if gguf is not None:
        g = Path(gguf).expanduser()
        _check_gguf(g)
        plan.files[g.name] = g
    return plan


def upload(plan: UploadPlan) -> str:
    """Create the repository (if needed) and upload the plan in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(plan.repo, private=plan.private, exist_ok=True, repo_type="model")
    ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in plan.files.items()]
    info = api.create_commit(plan.repo, ops, commit_message="Upload kielo adapter", repo_type="model")
    return info.commit_url
