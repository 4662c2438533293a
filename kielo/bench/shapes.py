"""Model shapes the bench builds with random weights (speed and memory do not depend on weight values)."""

# Llama-3.1-8B / Llama-Poro-2-8B
_LLAMA_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)

SHAPES = {
    "llama8b": _LLAMA_8B,
    # Llama-3.1-70B: 4-bit weights of ~37 GiB; the multi-GPU bench's FSDP2 case (kielo.bench.multigpu)
    "llama70b": dict(_LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64),
    # Gemma 3 text models: 270M (kielo's embedded default), 1B and the 4B language tower
    "gemma270m": dict(
        arch="gemma3",
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=512,
    ),
    "gemma1b": dict(
        arch="gemma3",
        vocab_size=262144,
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=512,
    ),
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
