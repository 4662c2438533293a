"""The configs of common hub models, so that ``kielo plan`` sizes them without a network.

Each entry is the model's own ``config.json`` reduced to the fields that set its shape (the rest keep
transformers' defaults, which do not change parameter counts or widths). A hub id listed here is planned
from this table; any other hub id needs its config from the local hub cache or the network.
"""

from __future__ import annotations

_LLAMA_8B = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
_LLAMA_70B = dict(_LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
# BLOOM architecture with ALiBi (LumiOpen/Poro-34B's config.json).
_PORO_34B = dict(model_type="bloom", vocab_size=128000, hidden_size=7168, n_layer=54, n_head=56, tie_word_embeddings=True)
_GEMMA3_TEXT = dict(
    model_type="gemma3_text",
    vocab_size=262144,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    max_position_embeddings=32768,
)
_GEMMA3_270M = dict(_GEMMA3_TEXT, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, sliding_window=512)
_GEMMA3_1B = dict(_GEMMA3_TEXT, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, sliding_window=512)
# The 4B, 12B and 27B are image-text models: a Gemma 3 text tower and a SigLIP vision tower (as their configs
# give them; kielo loads and trains the whole model, so the plan counts the vision tower's weights too).
_SIGLIP = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=896,
    patch_size=14,
    vision_use_head=False,
)


def _gemma3(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int) -> dict:
    text = dict(
        _GEMMA3_TEXT,
        vocab_size=262208,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=131072,
        sliding_window=1024,
    )
    return dict(model_type="gemma3", text_config=text, vision_config=_SIGLIP, mm_tokens_per_image=256)


KNOWN_CONFIGS: dict[str, dict] = {
    "meta-llama/Llama-3.1-8B": _LLAMA_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_8B,
    "meta-llama/Llama-3.1-70B": _LLAMA_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA_70B,
    "LumiOpen/Llama-Poro-2-8B-base": _LLAMA_8B,
    "LumiOpen/Llama-Poro-2-8B-Instruct": _LLAMA_8B,
    "LumiOpen/Llama-Poro-2-70B-base": _LLAMA_70B,
    "LumiOpen/Llama-Poro-2-70B-Instruct": _LLAMA_70B,
    "LumiOpen/Poro-34B": _PORO_34B,
    "google/gemma-3-270m": _GEMMA3_270M,
    "google/gemma-3-270m-it": _GEMMA3_270M,
    "google/gemma-3-1b-pt": _GEMMA3_1B,
    "google/gemma-3-1b-it": _GEMMA3_1B,
    **{f"google/gemma-3-4b-{k}": _gemma3(2560, 10240, 34, 8, 4, 256) for k in ("pt", "it")},
    **{f"google/gemma-3-12b-{k}": _gemma3(3840, 15360, 48, 16, 8, 256) for k in ("pt", "it")},
    **{f"google/gemma-3-27b-{k}": _gemma3(5376, 21504, 62, 32, 16, 128) for k in ("pt", "it")},
}


def known_config(name: str):
    """The transformers config of hub id ``name`` from :data:`KNOWN_CONFIGS` (case-insensitive), or None."""
    from transformers import AutoConfig

    found = {k.lower(): v for k, v in KNOWN_CONFIGS.items()}.get(name.lower())
    if found is None:
        return None
    spec = dict(found)
    return AutoConfig.for_model(spec.pop("model_type"), **spec)
