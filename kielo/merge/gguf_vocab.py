"""The tokenizer as GGUF metadata (``tokenizer.ggml.*``), so llama.cpp and transformers can rebuild it.

Two kinds of HF tokenizer are written, the two kielo's target models use:

- sentencepiece-style BPE with byte fallback (Gemma, Llama 2): ``tokenizer.ggml.model = "llama"``, tokens
  in id order with scores; llama.cpp merges the highest-scoring pair first, and these vocabularies list
  tokens best-first, so a token's score is minus its id (what llama.cpp's converter writes for Gemma);
- byte-level BPE (GPT-2 style, Llama 3, BLOOM): ``"gpt2"``, tokens plus the merge list, and the name of the
  pre-tokenizer (the regex that splits text before merging), which llama.cpp knows by name only.

Token types follow llama.cpp: added special tokens are CONTROL, other added tokens USER_DEFINED, ``<0xNN>``
tokens BYTE; rows of the embedding beyond the tokenizer are filled with unused ``[PADn]`` tokens.
"""

from __future__ import annotations

import json
import logging
import re

from kielo.errors import KieloError

log = logging.getLogger(__name__)

BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# Split regexes of tokenizer.json pre-tokenizers, by the name llama.cpp gives them.
KNOWN_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "bloom": " ?[^(\\s|[.,!?…。，、।۔،])]+",
}


def _pre_tokenizer_name(spec: dict) -> str | None:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer, or None when it has none for it."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if not splits and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's (llama.cpp spells the name "gpt-2": "gpt2" fails to load)
    for name, regex in KNOWN_SPLITS.items():
        if splits and splits[0] == regex:
            return name
    return None


def _adds(tokenizer, token_id: int | None, at_start: bool) -> bool:
    """Whether the tokenizer puts this special token around plain text by itself."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0 if at_start else -1] == token_id


def add_tokenizer(writer, tokenizer, gguf_arch: str, n_vocab: int, end_token_id: int | None, chat_template: str | None) -> dict:
    """Add ``tokenizer.ggml.*`` (and the chat template) to ``writer``; returns a summary for the report."""
    import gguf

    if not getattr(tokenizer, "is_fast", False):
        raise KieloError("GGUF export needs a fast tokenizer (tokenizer.json)", "save the tokenizer with tokenizers installed")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise KieloError(
            f"GGUF export supports BPE tokenizers, not {model.get('type')}", "convert the merged folder with llama.cpp's converter"
        )
    spm = bool(model.get("byte_fallback"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > n_vocab:
        raise KieloError(
            f"the tokenizer has {len(by_id)} tokens but the model only {n_vocab} embedding rows",
            "use the tokenizer the model was trained with",
        )
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    # Gemma's sentencepiece model has whitespace runs as user-defined pieces spelled with real spaces;
    # transformers spells them "▁▁..." and respells them back when it reads a GGUF.
    space_runs = spm and gguf_arch.startswith("gemma")
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
        elif i in added:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
            scores.append(-1000.0)
        elif spm and BYTE_TOKEN.match(tok):
            tokens.append(tok)
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        elif space_runs and len(tok) > 1 and set(tok) == {"\u2581"}:
            tokens.append(" " * len(tok))
            types.append(gguf.TokenType.USER_DEFINED)
            scores.append(-1000.0)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(i))
    summary: dict = {"model": "llama" if spm else "gpt2", "tokens": len(by_id), "padded_to": n_vocab}
    writer.add_tokenizer_model(summary["model"])
    if spm:
        writer.add_tokenizer_pre("default")
    else:
        pre = _pre_tokenizer_name(spec)
        summary["pre_tokenizer"] = pre or "default"
        if pre is None:
            log.warning(
                "GGUF export: llama.cpp has no name for this tokenizer's pre-tokenizer; it will split text "
                "with its default rules, which can tokenize differently from transformers"
            )
        writer.add_tokenizer_pre(pre or "default")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if spm:
        writer.add_token_scores(scores)
    for key, token_id in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    if end_token_id is not None and end_token_id != tokenizer.eos_token_id:
        # The trained end of an answer (e.g. <end_of_turn>): llama.cpp stops generating at EOT too.
        writer.add_eot_token_id(end_token_id)
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, at_start=True))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, at_start=False))
    if spm:
        normalizer = json.dumps(spec.get("normalizer")) + json.dumps(spec.get("pre_tokenizer"))
        writer.add_add_space_prefix(
            '"Prepend"' in normalizer or '"prepend_scheme": "always"' in normalizer or '"prepend_scheme": "first"' in normalizer
        )
    if chat_template:
        writer.add_chat_template(chat_template)
    summary["chat_template"] = bool(chat_template)
    return summary
