"""Model shapes the bench builds with random weights (speed and memory do not depend on weight values)."""

from kielo.plan.known import KNOWN_CONFIGS


def _hub_shape(name: str, arch: str = "llama", **changes) -> dict:
    """The shape ``kielo plan`` knows for hub id ``name`` (``kielo.plan.known``), as the bench builds it: ``arch``
    names the model class instead of ``model_type``, and ``changes`` override fields."""
    spec = {k: v for k, v in KNOWN_CONFIGS[name].items() if k != "model_type"}
    return {**({"arch": arch} if arch != "llama" else {}), **spec, **changes}


SHAPES = {
    # Llama-3.1-8B / Llama-Poro-2-8B; positions up to 8,192 (the bench's rows are 2,048 wide)
    "llama8b": _hub_shape("meta-llama/Llama-3.1-8B", max_position_embeddings=8192),
    # Llama-3.1-70B: 4-bit weights of ~37 GiB; the multi-GPU bench's FSDP2 case (kielo.bench.multigpu)
    "llama70b": _hub_shape("meta-llama/Llama-3.1-70B", max_position_embeddings=8192),
    # Gemma 3 text models: 270M (kielo's embedded default), 1B and the 4B language tower
    "gemma270m": _hub_shape("google/gemma-3-270m", arch="gemma3"),
    "gemma1b": _hub_shape("google/gemma-3-1b-pt", arch="gemma3"),
    "gemma4b": dict(
        arch="gemma3",
        vocab_size=262144,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=1024,
    ),
    # BLOOM with ALiBi (TurkuNLP gpt3-finnish-8B / Poro-34B family), 7B so it fits one GPU
    "bloom8b": dict(arch="bloom", vocab_size=131072, hidden_size=4096, n_layer=32, n_head=32),
    # CPU smoke test of the bench itself
    "tiny": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
}
