"""Load what an analysis compares: the model's tokenizer and template (as training uses them) and extra tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kielo.config.schema import Config
from kielo.data.encode import Encoder
from kielo.data.template import Template
from kielo.errors import KieloError

# A folder holding only a tokenizer (no model weights or config.json) is a valid --tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class ModelTokenizer:
    """The tokenizer, template and encoder training would use for ``config``."""

    name: str
    tokenizer: object
    template: Template
    encoder: Encoder
    config: Config


def load_model_tokenizer(config: Config) -> ModelTokenizer:
    """Resolve ``model.name`` (alias, folder, .gguf, run folder) and build the training encoder for it."""
    from kielo.model.bundle import effective_config, load_tokenizer_and_template, make_encoder

    config, source = effective_config(config)
    tokenizer, template = load_tokenizer_and_template(config, source)
    return ModelTokenizer(config.model.name, tokenizer, template, make_encoder(tokenizer, template, config), config)


def load_extra_tokenizer(name: str, trust_remote_code: bool = False):
    """A tokenizer to compare against: a tokenizer-only folder or anything ``--model`` accepts.

    Only its text tokenization is used, so unlike a model's tokenizer it needs no pad token.
    """
    from transformers import AutoTokenizer

    from kielo.model.source import resolve_model

    folder = Path(name).expanduser()
    try:
        if folder.is_dir() and not (folder / "config.json").is_file() and any((folder / f).is_file() for f in TOKENIZER_FILES):
            path = str(folder)
        else:
            path = resolve_model(name).path
    except KieloError as e:
        raise KieloError(f"--tokenizer {name}: {e.message}", e.fix) from None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported with the tokenizer's name and the reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KieloError(
            f"--tokenizer {name}: cannot load a tokenizer from {path} ({reason})",
            "pass a folder with tokenizer.json / tokenizer_config.json, a model folder, a .gguf file or a hub id available offline",
        ) from None
