"""The sizes of a model that decide training memory, read from its config on the meta device (no weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    """What a memory estimate needs to know about a model."""

    model_type: str
    n_layers: int
    hidden: int
    vocab: int
    q_width: int  # query heads x head dim
    kv_width: int  # key (= value) heads x head dim
    intermediate: int  # MLP inner width
    n_heads: int
    layer_linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of one decoder layer's linear layers
    embedding_params: int
    head_params: int  # 0 when the head shares the embedding's weight
    other_params: int  # norms, biases and the like: stay unquantized

    @property
    def quantized_params(self) -> int:
        return self.n_layers * sum(i * o for _, i, o in self.layer_linears)

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        """LoRA parameters for rank ``r`` on the named linear layers (``all-linear`` or a list of names)."""
        chosen = [(i, o) for name, i, o in self.layer_linears if targets == "all-linear" or name.rsplit(".", 1)[-1] in targets]
        return self.n_layers * sum(r * (i + o) for i, o in chosen)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The longest list of identical blocks: the decoder layers, whatever the family calls them."""
    best = None
    for module in model.modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module)
            and len({type(m) for m in module}) == 1
            and (best is None or len(module) > len(best))
        ):
            best = module
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of decoder layers")
    return best


def _width(linears: dict[str, tuple[int, int]], *names: str, side: int = 1) -> int:
    for n in names:
        if n in linears:
            return linears[n][side]
    return 0


def shape_from_config(model_config) -> ModelShape:
    """Build the model on the meta device from ``model_config`` and measure its parts."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        shell = AutoModelForCausalLM.from_config(model_config)
    layers = _decoder_layers(shell)
    linears = tuple((name, m.in_features, m.out_features) for name, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear))
    by_leaf = {name.rsplit(".", 1)[-1]: (i, o) for name, i, o in linears}
    emb = shell.get_input_embeddings().weight
    head = shell.get_output_embeddings()
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    # On the meta device the head and embedding are separate tensors even when the loaded model ties them.
    separate = 0 if head is None or head.weight is emb else head.weight.numel()  # a second tensor on meta
    tied = not separate or bool(getattr(cfg, "tie_word_embeddings", False))
    total = sum(p.numel() for p in shell.parameters())
    linear_params = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear))
    hidden = cfg.hidden_size
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    inter = _width(by_leaf, "gate_proj", "up_proj", "fc1", "dense_h_to_4h", "c_fc", "w1")
    return ModelShape(
        model_type=cfg.model_type,
        n_layers=len(layers),
        hidden=hidden,
        vocab=emb.shape[0],
        q_width=n_heads * head_dim,
        kv_width=n_kv * head_dim,
        intermediate=inter or 4 * hidden,
        n_heads=n_heads,
        layer_linears=linears,
        embedding_params=emb.numel(),
        head_params=0 if tied else separate,
        other_params=total - linear_params - emb.numel() - separate,
    )
