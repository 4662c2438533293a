"""training.stream_dtype / training.kernels: what they resolve to, and the errors for GPU-only choices on CPU."""

from __future__ import annotations

import pytest
import torch

from kielo.config.load import from_dict
from kielo.errors import KieloError
from kielo.model.precision import (
    Precision,
    apply_precision,
    liger_installed,
    resolve_hardware,
    resolve_precision,
    resolved_precision,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg(bits: int = 4, **training):
    return from_dict({"quantization": {"bits": bits}, "training": training})


def test_auto_takes_the_bf16_stream_only_where_measured_and_on_cuda():
    bf16 = torch.bfloat16
    assert resolve_precision(cfg(), "gemma3_text", CPU, torch.float32).stream == torch.float32
    assert resolve_precision(cfg(), "llama", CPU, bf16).stream == torch.float32
    assert resolve_precision(cfg(), "llama", CUDA, bf16).stream == bf16
    assert resolve_precision(cfg(), "bloom", CUDA, bf16).stream == torch.float32
    assert resolve_precision(cfg(), "mistral", CUDA, bf16).stream == torch.float32  # not measured
    gemma = resolve_precision(cfg(), "gemma3_text", CUDA, bf16)
    assert gemma.stream == bf16
    assert gemma.liger == liger_installed()  # auto: Liger only when it is there
    # Asked for explicitly, each way.
    assert resolve_precision(cfg(stream_dtype="compute"), "llama", CUDA, bf16).stream == bf16
    assert resolve_precision(cfg(stream_dtype="fp32"), "gemma3_text", CUDA, bf16) == Precision(torch.float32, False)
    # Unquantized models are never upcast: their stream is the weights' dtype.
    assert resolve_precision(cfg(bits=0), "llama", CUDA, bf16).stream == bf16


def test_liger_needs_cuda_and_a_supported_model():
    with pytest.raises(KieloError, match="needs a CUDA GPU") as e:
        resolve_precision(cfg(kernels="liger"), "llama", CPU, torch.float32)
    assert "training.kernels auto" in e.value.fix
    assert resolve_precision(cfg(kernels="none"), "gemma3_text", CUDA, torch.bfloat16).liger is False


def test_unknown_choice_names_the_key():
    with pytest.raises(KieloError, match="training.stream_dtype"):
        cfg(stream_dtype="fp8")


def test_apply_casts_only_frozen_fp32_weights(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = model.lm_head.weight
    trainable.requires_grad_(True)
    apply_precision(model, Precision(torch.bfloat16, False))
    assert model.model.norm.weight.dtype == torch.bfloat16
    assert trainable.dtype == torch.float32  # trainable weights keep their fp32 master copy


def test_resolved_config_carries_the_precision_and_resolves_to_itself():
    resolved = resolve_hardware(cfg(), "llama", CPU)
    t, q = resolved.training, resolved.quantization
    assert (t.device, q.compute_dtype, t.stream_dtype, t.kernels) == ("cpu", "fp32", "compute", "none")
    assert resolved_precision(resolved) == resolve_precision(cfg(), "llama", CPU, torch.float32)
    assert resolve_hardware(resolved, "llama", CPU) == resolved
    # a quantized model on the fp32 stream with bf16 matmuls keeps "fp32" (not the compute dtype)
    bf16 = resolve_hardware(from_dict({"quantization": {"compute_dtype": "bf16"}, "training": {"stream_dtype": "fp32"}}), "llama", CPU)
    assert bf16.training.stream_dtype == "fp32" and resolved_precision(bf16) == Precision(torch.float32, False)
    with pytest.raises(ValueError, match="resolve_hardware"):
        resolved_precision(cfg())
