"""Unsloth inside the bench: loaded and adapted as its anchor script does, started from stock's LoRA weights.

Its own loss (``num_items_in_batch``) and stock's padded data b; a stand-in tokenizer for the random models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kielo.errors import KieloError

UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNSLOTH_FAMILIES = ("llama", "gemma3_text")


def save_stand_in_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with the model's vocabulary size (one word per id, specials among them): Unsloth
    loads a tokenizer with every model, and the bench's random models have none."""
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, PreTrainedTokenizerFast

    vocab = AutoConfig.from_pretrained(folder).vocab_size
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token=f"w{vocab - 1}"
    ).save_pretrained(folder)


def load_unsloth(folder: Path, max_len: int, checkpointing: bool):
    """Unsloth's 4-bit model and LoRA adapter, set up as its anchor script does (same LoRA settings as stock)."""
    # Unsloth patches transformers and peft: it must be imported before them (so not in sorted order).
    try:
        from unsloth import FastLanguageModel, FastModel  # noqa: I001
    except ImportError as e:
        raise KieloError(
            f"the unsloth variant needs Unsloth ({e})",
            "install its wheels (unsloth, unsloth_zoo and their dependencies; bench/NOTES.md, 'Unsloth inside the bench') "
            "and run it on a GPU",
        ) from None
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type not in UNSLOTH_FAMILIES:
        raise KieloError(
            f"the unsloth variant covers Llama and Gemma 3, not {model_type}", "bench unsloth on a llama8b or gemma shape"
        )
    fast = FastModel if model_type == "gemma3_text" else FastLanguageModel
    model, _ = fast.from_pretrained(
        model_name=str(folder), max_seq_length=max_len, dtype=torch.bfloat16, load_in_4bit=True, local_files_only=True
    )
    model = fast.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=0,
        bias="none",
        target_modules=UNSLOTH_TARGETS,
        use_gradient_checkpointing="unsloth" if checkpointing else False,
        random_state=0,
    )
    fast.for_training(model)
    return model


def lora_key(name: str) -> str:
    """A LoRA weight's place independent of the wrapper's prefix: ``layers.3.self_attn.q_proj.lora_A``."""
    name = name[name.index("layers.") :] if "layers." in name else name
    return name.replace(".default", "").removesuffix(".weight")


def init_from(own: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``own``'s LoRA weights replaced by ``other``'s at the same layer and module (another stack's start)."""
    theirs = {lora_key(n): t for n, t in other.items()}
    missing = sorted({lora_key(n) for n in own} ^ set(theirs))
    if missing:
        raise KieloError(
            f"LoRA weights do not pair up between the stacks: {missing[:6]}",
            "both stacks must adapt the same linear layers (stock adapts all-linear; see UNSLOTH_TARGETS)",
        )
    return {n: theirs[lora_key(n)].to(t.dtype) for n, t in own.items()}
