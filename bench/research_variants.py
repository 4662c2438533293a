"""`kielo bench` with the research variants and case options that are not kielo features: the levers measured on
the way to kielo's training path (bench/NOTES.md). They drive the same library seams as the product variants,
with other arguments: the precision kielo applies (``kielo.model.precision``), the loss head handed to
``kielo.train.step.accumulate_gradients``, and contexts entered around each step.

Variants (on top of ``kielo.bench.cases.VARIANTS``):

- ``kielo+bf16``: non-quantized weights kept in bf16 instead of peft's fp32 upcast; ``kielo+bf16+liger`` also
  Liger's RMSNorm, RoPE and SwiGLU/GeGLU kernels (the chunked head stays unless a case asks for head=liger);
- ``kielo+lean``: fp32 norms and residual stream as stock, but embedding and head weights kept in bf16 (the head
  casts its input: the bf16-matmul head); ``kielo+lean+liger``.

Case options: ``head=chunked|ckpt|liger`` (kielo's chunked head, each chunk recomputed in backward, or Liger's
fused linear cross-entropy), ``headmm=bf16`` (the chunked head's matmul on bf16 operands), ``attn=bf16`` (SDPA on
bf16 copies of q, k, v), ``autocast`` (bf16 autocast).

    python bench/research_variants.py --shape tiny --seq 128 --max-length 256 --cases "stock:a kielo+lean:a/head=ckpt"
    bash bench/run_qlora_bench.sh --research --shape llama8b --cases "stock:a,b kielo+bf16:a,b,a/nogc"  # GPU machine
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from kielo.bench.cases import VARIANTS, Registry, StepOption, Variant
from kielo.bench.command import main as bench_main
from kielo.errors import KieloError

# ------------------------------------------------------------------------------------------- loss heads


def ckpt_loss_sum(model, batch):
    """kielo's trained-position head with each chunk's logits recomputed in backward instead of kept."""
    from torch.utils.checkpoint import checkpoint

    from kielo.plan.memory import HEAD_CHUNK
    from kielo.train.loss import causal_lm, head_logits, trained_hidden

    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)

    def chunk_ce(hc, yc):
        return F.cross_entropy(head_logits(lm, hc), yc, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], HEAD_CHUNK):
        total = total + checkpoint(chunk_ce, h[i : i + HEAD_CHUNK], y[i : i + HEAD_CHUNK], use_reentrant=False)
    return total, int(y.numel())


def bf16_head_loss_sum(model, batch):
    """kielo's chunked trained-position head with the matmul on bf16 operands (fp32 logits, fp32 loss)."""
    from kielo.plan.memory import HEAD_CHUNK
    from kielo.train.loss import causal_lm, trained_hidden

    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)
    w = lm.get_output_embeddings().weight
    w = w if w.dtype == torch.bfloat16 else w.to(torch.bfloat16)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], HEAD_CHUNK):
        logits = F.linear(h[i : i + HEAD_CHUNK].to(torch.bfloat16), w).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        total = total + F.cross_entropy(logits, y[i : i + HEAD_CHUNK], reduction="sum")
    return total, int(y.numel())


# -------------------------------------------------------------------------------------- step contexts


class Bf16Attention:
    """Within the block, transformers' SDPA attention runs on bf16 copies of q, k, v (flash/cuDNN kernels,
    which fp32 has none of) and returns its output in the stream's dtype. transformers looks the attention
    function up by name in ALL_ATTENTION_FUNCTIONS at each call; the entry is registered for the block only."""

    def __init__(self, device=None):
        pass

    def __enter__(self):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        def attention(module, q, k, v, mask, **kw):
            out, w = sdpa_attention_forward(module, q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16), mask, **kw)
            return out.to(q.dtype), w

        ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
        return self

    def __exit__(self, *exc):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        del ALL_ATTENTION_FUNCTIONS["sdpa"]  # the global mapping's own sdpa shows through again


def bf16_autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------ variants


def stream_weights(dtype: torch.dtype, liger: bool):
    """A variant's change to the loaded base model: its unquantized frozen weights in ``dtype`` (the fp32 ones
    peft upcast; bf16 -> fp32 -> bf16 is exact, so this equals never upcasting) and, with ``liger``, Liger's
    kernels, through kielo's own precision step. The loss head stays the one the path had."""

    def adjust(model, path):
        from kielo.model.precision import Precision, apply_precision

        precision = Precision(dtype, liger)
        apply_precision(model, precision)
        return dataclasses.replace(path, precision=precision)

    return adjust


def lean(liger: bool):
    """fp32 norms and residual stream as stock, embedding and head weights in bf16: they meet the stream only at
    the embedding's output (the same bf16-valued numbers) and the head's input, which the bf16-matmul head casts,
    so 2 bytes a parameter are kept instead of 4."""
    keep_stream = stream_weights(torch.float32, liger)

    def adjust(model, path):
        path = keep_stream(model, path)
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.weight.data = module.weight.data.to(torch.bfloat16)
        return dataclasses.replace(path, loss=bf16_head_loss_sum)

    return adjust


RESEARCH_VARIANTS = {
    "kielo+bf16": Variant("kielo", adjust=stream_weights(torch.bfloat16, liger=False)),
    "kielo+bf16+liger": Variant("kielo", adjust=stream_weights(torch.bfloat16, liger=True)),
    "kielo+lean": Variant("kielo", adjust=lean(liger=False), planned=False),
    "kielo+lean+liger": Variant("kielo", adjust=lean(liger=True), planned=False),
}


# ---------------------------------------------------------------------------------------- case options


def _flag(key: str, value: str) -> None:
    if value:
        raise KieloError(f"case option {key} takes no value, not {value!r}", f"write /{key}")


def head_option(value: str) -> StepOption:
    from kielo.train.loss import chunked_loss_sum, fused_loss_sum

    heads = {"chunked": chunked_loss_sum, "ckpt": ckpt_loss_sum, "liger": fused_loss_sum}
    if value not in heads:
        raise KieloError(f"case option head={value!r}", f"heads: {', '.join(heads)}")
    return StepOption({"head": value}, loss=heads[value], planned=value != "ckpt")


def headmm_option(value: str) -> StepOption:
    if value != "bf16":
        raise KieloError(f"case option headmm={value!r}", "write headmm=bf16")
    return StepOption({"head_bf16": True}, loss=bf16_head_loss_sum)


def attn_option(value: str) -> StepOption:
    if value != "bf16":
        raise KieloError(f"case option attn={value!r}", "write attn=bf16")
    return StepOption({"attn_bf16": True}, context=Bf16Attention)


def autocast_option(value: str) -> StepOption:
    _flag("autocast", value)
    return StepOption({"autocast": True}, context=bf16_autocast)


RESEARCH_OPTIONS = {"head": head_option, "headmm": headmm_option, "attn": attn_option, "autocast": autocast_option}


def registry() -> Registry:
    """The product's variants and these, with this script as the workers' command (so they know them too)."""
    return Registry({**VARIANTS, **RESEARCH_VARIANTS}, RESEARCH_OPTIONS, (sys.executable, str(Path(__file__).resolve())))


if __name__ == "__main__":
    sys.exit(bench_main(registry=registry()))
