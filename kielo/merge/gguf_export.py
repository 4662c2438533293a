"""Write a merged HF model as a GGUF file for llama.cpp, with the ``gguf`` package (gguf-py).

It follows llama.cpp's ``convert_hf_to_gguf.py`` for the architectures kielo targets, including the two
value changes that converter makes and every GGUF reader undoes:

- Llama: the rows of ``q_proj``/``k_proj`` are permuted per head (llama.cpp's rotary embedding pairs
  neighbouring dimensions, HF's pairs the two halves of a head);
- Gemma 3: every RMSNorm weight is stored as ``w + 1`` (HF's Gemma norm computes ``x * (1 + w)``,
  llama.cpp's plain ``x * w``);
- BLOOM: the fused ``query_key_value`` rows are regrouped from per-head (q, k, v) to all q, all k, all v.

Tensors are streamed to the file one at a time (header first, then each tensor converted and written),
so exporting needs little memory beyond the model itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kielo.errors import KieloError
from kielo.merge.options import GGUF_TYPES

log = logging.getLogger(__name__)

LOSSLESS_FOR = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _qtype(name: str):
    import gguf

    return {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[name]


def _file_type(name: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[name]


def resolve_gguf_type(gguf_type: str, dtype: torch.dtype) -> str:
    """``auto`` is the merged model's own dtype, so the file holds exactly the merged weights."""
    if gguf_type not in GGUF_TYPES:
        raise KieloError(f"--gguf_type {gguf_type!r} is not supported", f"use one of: {', '.join(GGUF_TYPES)}")
    return LOSSLESS_FOR[dtype] if gguf_type == "auto" else gguf_type


def bytes_per_weight(gguf_type: str) -> float:
    return {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}[gguf_type]


# --- per-architecture rules --------------------------------------------------------------------------


def rope_theta(config, layer_type: str = "full_attention", default: float = 10000.0) -> float:
    """``rope_theta`` from transformers 5's ``rope_parameters`` (flat or per layer type) or the old attribute."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params:
        params = params[layer_type]
    return float(params.get("rope_theta", getattr(config, "rope_theta", None) or default))


def _rope_types(config) -> set[str]:
    params = getattr(config, "rope_parameters", None) or {}
    nested = [v for v in params.values() if isinstance(v, dict)]
    return {p.get("rope_type", "default") for p in (nested or [params])}


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _llama_problems(config) -> list[str]:
    problems = []
    if _rope_types(config) - {"default"}:
        problems.append(f"RoPE scaling {sorted(_rope_types(config))} (the export writes plain RoPE)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention/MLP biases")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act} (llama.cpp's Llama uses SiLU)")
    return problems


def _decoder_hparams(w, config) -> None:
    """The sizes every llama.cpp decoder architecture records."""
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)


def _llama_hparams(w, config) -> None:
    _decoder_hparams(w, config)
    w.add_rope_dimension_count(_head_dim(config))
    w.add_rope_freq_base(rope_theta(config))
    w.add_vocab_size(config.vocab_size)
    if _head_dim(config) != config.hidden_size // config.num_attention_heads:
        w.add_key_length(_head_dim(config))
        w.add_value_length(_head_dim(config))


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: interleave the two halves of every head's rows."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama_tensor(name: str, t: torch.Tensor, config) -> torch.Tensor:
    if name.endswith("self_attn.q_proj.weight"):
        return permute_rotary(t, config.num_attention_heads)
    if name.endswith("self_attn.k_proj.weight"):
        return permute_rotary(t, config.num_key_value_heads)
    return t


def gemma3_full_layers(n_layers: int) -> list[str]:
    """The attention layout llama.cpp (and transformers' GGUF loader) assume for Gemma 3: every 6th layer global."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def _gemma3_problems(config) -> list[str]:
    problems = []
    layer_types = getattr(config, "layer_types", None)
    if layer_types and list(layer_types) != gemma3_full_layers(config.num_hidden_layers):
        problems.append(f"attention layout {layer_types} (GGUF readers assume every 6th layer is global)")
    if _rope_types(config) - {"default"}:
        problems.append(f"RoPE scaling {sorted(_rope_types(config))}")
    if rope_theta(config, "sliding_attention") != 10000.0:
        problems.append(f"local RoPE base {rope_theta(config, 'sliding_attention')} (llama.cpp fixes it at 10000)")
    if getattr(config, "query_pre_attn_scalar", _head_dim(config)) != _head_dim(config):
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {_head_dim(config)}")
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("attention logit soft-capping")
    return problems


def _gemma3_hparams(w, config) -> None:
    _decoder_hparams(w, config)
    w.add_key_length(_head_dim(config))
    w.add_value_length(_head_dim(config))
    w.add_rope_freq_base(rope_theta(config, "full_attention", 1_000_000.0))
    w.add_sliding_window(config.sliding_window)
    w.add_vocab_size(config.vocab_size)
    if getattr(config, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(config.final_logit_softcapping)


def _gemma3_tensor(name: str, t: torch.Tensor, config) -> torch.Tensor:
    # The +1 is done in fp32: near 1.0 a 16-bit float would drop most of a small norm weight's bits.
    return t.float() + 1 if name.endswith("norm.weight") else t


def _bloom_problems(config) -> list[str]:
    return []


def _bloom_hparams(w, config) -> None:
    n_embed = config.hidden_size
    w.add_context_length(getattr(config, "seq_length", None) or n_embed)  # as llama.cpp's converter
    w.add_embedding_length(n_embed)
    w.add_feed_forward_length(4 * n_embed)
    w.add_block_count(config.n_layer)
    w.add_head_count(config.n_head)
    w.add_head_count_kv(config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    w.add_vocab_size(config.vocab_size)


def _bloom_tensor(name: str, t: torch.Tensor, config) -> torch.Tensor:
    if "query_key_value" not in name:
        return t
    n_head, n_embed = config.n_head, config.hidden_size
    # HF stores (head, q|k|v, dim) row blocks; llama.cpp wants all q rows, then all k, then all v.
    # A row operation: the same for a weight, a bias or a LoRA B matrix.
    qkv = t.reshape(n_head, 3, n_embed // n_head, *t.shape[1:])
    return torch.cat([qkv[:, i].reshape(n_embed, *t.shape[1:]) for i in range(3)])


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp's architecture name (general.architecture)
    problems: Callable  # config -> what the file can't express (empty: exact)
    hparams: Callable  # (writer, config) -> None
    tensor: Callable  # (hf name, tensor, config) -> tensor in llama.cpp's layout


ARCHS = {
    "llama": ArchSpec("llama", _llama_problems, _llama_hparams, _llama_tensor),
    "gemma3_text": ArchSpec("gemma3", _gemma3_problems, _gemma3_hparams, _gemma3_tensor),
    "bloom": ArchSpec("bloom", _bloom_problems, _bloom_hparams, _bloom_tensor),
}


def arch_spec(config) -> ArchSpec:
    """The export rules for a model config; a clear error for architectures kielo can't export."""
    spec = ARCHS.get(config.model_type)
    if spec is None:
        raise KieloError(
            f"GGUF export does not support model type `{config.model_type}`",
            f"export one of: {', '.join(ARCHS)}; or convert the merged folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return spec


def check_exportable(config) -> None:
    """Fail before any work when the GGUF format can't express this model exactly."""
    problems = arch_spec(config).problems(config)
    if problems:
        raise KieloError(
            f"a GGUF file of this {config.model_type} model would not match it: {'; '.join(problems)}",
            "leave out --gguf and convert the merged folder with llama.cpp's own converter, if it supports these settings",
        )


# --- writing -----------------------------------------------------------------------------------------


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str
    qtype_name: str


def _plan(state: dict[str, torch.Tensor], config, spec: ArchSpec, gguf_type: str) -> list[_Planned]:
    import gguf

    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer)
    tied = getattr(config, "tie_word_embeddings", False)
    planned, unknown = [], []
    for hf_name, t in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # the output head is the embedding matrix; GGUF readers tie it when output.weight is absent
        # llama.cpp's converter drops BLOOM's "transformer." prefix before looking names up.
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias")) or names.get_name(
            hf_name.removeprefix("transformer."), try_suffixes=(".weight", ".bias")
        )
        if gguf_name is None:
            unknown.append(hf_name)
            continue
        kind = gguf_type
        if t.ndim < 2:
            kind = "f32"  # norms and biases stay f32, as llama.cpp's converter keeps them
        elif kind == "q8_0" and t.shape[-1] % 32:
            kind = "f16"  # Q8_0 blocks are 32 wide
        planned.append(_Planned(gguf_name, hf_name, kind))
    if unknown:
        raise KieloError(
            f"GGUF export: no llama.cpp name for tensors {unknown[:5]}",
            "this model has parts kielo's exporter doesn't know; use llama.cpp's converter",
        )
    if spec.gguf_arch == "bloom" and not any(p.gguf_name == "output.weight" for p in planned):
        # llama.cpp's BLOOM graph reads an explicit output matrix: the (tied) embeddings once more.
        emb = next(p for p in planned if p.gguf_name == "token_embd.weight")
        planned.append(_Planned("output.weight", emb.hf_name, emb.qtype_name))
    return planned


def _encode(t: torch.Tensor, kind: str) -> np.ndarray:
    """A tensor as the bytes GGUF stores for type ``kind`` (shape: rows x row bytes)."""
    import gguf

    t = t.detach().cpu()
    if kind == "bf16":
        # Exact: torch's bf16 rounding, then the raw 16 bits.
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
    data = t.float().numpy()
    if kind == "f32":
        return data.view(np.uint8)
    if kind == "f16":
        return data.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(data, _qtype(kind))


def write_gguf(model, tokenizer, path: Path, gguf_type: str, name: str, end_token_id: int | None, chat_template: str | None) -> dict:
    """Write ``model`` (an unquantized HF causal LM) and ``tokenizer`` to ``path``; returns what was written."""
    import gguf

    from kielo.merge.gguf_vocab import add_tokenizer

    config = model.config
    spec = arch_spec(config)
    check_exportable(config)
    state = model.state_dict()
    planned = _plan(state, config, spec, gguf_type)
    writer = gguf.GGUFWriter(str(path), spec.gguf_arch)
    try:
        writer.add_name(name)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_file_type(_file_type(gguf_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        spec.hparams(writer, config)
        vocab = add_tokenizer(writer, tokenizer, spec.gguf_arch, config.vocab_size, end_token_id, chat_template)
        for p in planned:
            shape = tuple(state[p.hf_name].shape)
            qtype = _qtype(p.qtype_name)
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            nbytes = int(np.prod(byte_shape))
            writer.add_tensor_info(p.gguf_name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for p in planned:
            writer.write_tensor_data(_encode(spec.tensor(p.hf_name, state[p.hf_name], config), p.qtype_name))
    finally:
        writer.close()
    types: dict[str, int] = {}
    for p in planned:
        types[p.qtype_name] = types.get(p.qtype_name, 0) + 1
    return {
        "file": path.name,
        "architecture": spec.gguf_arch,
        "type": gguf_type,
        "bytes": path.stat().st_size,
        "tensors": len(planned),
        "tensor_types": types,
        "tokenizer": vocab,
    }
