"""Fixtures: tiny random models and tokenizers built on the spot (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FINNISH = [
    "Suomen pääkaupunki on Helsinki.",
    "Kirjoita lyhyt runo syksystä.",
    "Vastaus: kolme omenaa.",
    "Selitä, miksi taivas on sininen.",
    "Kissa istuu ikkunalla ja katselee lintuja.",
    "Käännä englanniksi: Hyvää huomenta!",
    "Luettele kolme suomalaista järveä.",
    "Good morning!",
    "Järjestelmä Käyttäjä Vastaus ohje syöte",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ?",
    "### Vastaus:\n",
]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tokenizer(folder: Path, chat: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(FINNISH * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_model(folder: Path, arch: str, chat: bool = False) -> Path:
    """A 2-layer, 64-wide random model of ``arch`` (llama, gemma3, bloom or mpt) and its tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM, BloomConfig, Gemma3TextConfig, LlamaConfig, MptConfig

    tok = build_tokenizer(folder, chat=chat)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **ids,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "bloom":  # ALiBi, no position ids; weights large enough that outputs depend on the context
        cfg = BloomConfig(vocab_size=len(tok), hidden_size=64, n_layer=2, n_head=4, initializer_range=0.3, **ids)
    elif arch == "mpt":  # ALiBi too, but not a decoder kielo packs
        cfg = MptConfig(vocab_size=len(tok), d_model=64, n_layers=2, n_heads=4, max_seq_len=512, **ids)
    else:
        cfg = Gemma3TextConfig(
            **common, head_dim=16, sliding_window=16, tie_word_embeddings=True, layer_types=["sliding_attention", "full_attention"]
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if arch == "bloom":
        with torch.no_grad():  # BLOOM starts with zero biases and unit norms: make them count
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gemma"), "gemma3", chat=True)


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-bloom"), "bloom")


ROWS = [
    {"instruction": "Mikä on Suomen pääkaupunki?", "input": "", "output": "Suomen pääkaupunki on Helsinki."},
    {"instruction": "Kirjoita lyhyt runo.", "input": "syksy", "output": "Kissa istuu ikkunalla."},
    {"instruction": "Käännä englanniksi.", "input": "Hyvää huomenta!", "output": "Good morning!"},
    {
        "messages": [
            {"role": "user", "content": "Luettele kolme järveä."},
            {"role": "assistant", "content": "Saimaa, Päijänne ja Inari."},
        ]
    },
    {"instruction": "Selitä lyhyesti.", "input": "Miksi taivas on sininen?", "output": "Valo siroaa ilmassa."},
    {
        "messages": [
            {"role": "system", "content": "Vastaa lyhyesti."},
            {"role": "user", "content": "Paljonko on 2 + 3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "Entä 4 * 3?"},
            {"role": "assistant", "content": "12"},
        ]
    },
]

# Preference pairs in each row style kielo reads (TRL's standard and conversational, alpaca with extra keys).
PAIRS = [
    {"prompt": "Mikä on Suomen pääkaupunki?", "chosen": "Suomen pääkaupunki on Helsinki.", "rejected": "Good morning!"},
    {
        "prompt": [{"role": "user", "content": "Luettele kolme järveä."}],
        "chosen": [{"role": "assistant", "content": "Saimaa, Päijänne ja Inari."}],
        "rejected": [{"role": "assistant", "content": "Kissa istuu ikkunalla."}],
    },
    {
        "id": "fi-3",
        "task": "translation_fi_en",
        "answer_lang": "en",
        "instruction": "Käännä englanniksi.",
        "input": "Hyvää huomenta!",
        "chosen": "Good morning!",
        "rejected": "Hyvää huomenta!",
        "rejected_kind": "wrong_language",
    },
    {"instruction": "Paljonko on 2 + 3?", "chosen": "5", "rejected": "7, koska 2 + 3 = 7.", "rejected_kind": "wrong_number"},
]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = ROWS * 4
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def tiny_config(model: Path, data_path: Path, out: Path, **sections):
    """A config for a fast CPU run on a tiny model; ``sections`` override per section."""
    from kielo.config.load import from_dict

    base = {
        "model": {"name": str(model)},
        "quantization": {"bits": 4},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(data_path), "validation_split": 0.25, "max_length": 128},
        "training": {"max_steps": 4, "micro_batch_size": 2, "learning_rate": 1e-2, "seed": 1},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return from_dict(base)
