"""QLoRA training speed and parity: the stock stack vs kielo's training path, in one invocation on one GPU.

Builds a random-weight model in a real shape (speed and memory don't depend on weight values) and times
optimizer steps of NF4 + double-quant QLoRA (bf16 compute, LoRA r=16 alpha=32 on every linear projection,
AdamW lr 1e-4) on the same data for each variant of the plan:

- ``stock``: transformers + peft + bitsandbytes as the anchor scripts run it (prepare_model_for_kbit_training,
  full logits + the model's own loss, gradient checkpointing, model.train()); with gradient accumulation the
  loss is normalized by the step's trained tokens (``num_items_in_batch``), as transformers' Trainer does;
- ``kielo``: kielo's training path with ``kielo train``'s defaults (load_base_model, add_lora,
  accumulate_gradients over kielo Batches: loss only at trained positions, packed rows for variable-length
  data; training.stream_dtype and training.kernels auto: a bf16 stream with Liger's kernels and the fused LoRA
  node for Gemma 3 and Llama);
- ``kielo+fp32``: the same with the fp32 stream and no fused kernels on every model (stock's arithmetic);
- ``kielo+compute``: ``training.stream_dtype: compute`` on any family (bf16 stream, Liger when installed);
  ``+peftlora`` on ``kielo`` or ``kielo+compute``: peft's own LoRA forward instead of kielo's (the A/B of
  ``kielo.model.lora_forward``); ``+unfused``: kielo's LoRA forward without its fused 4-bit + LoRA node;
  ``kielo+tf32``: the defaults with TF32 for fp32 matmuls;
- lever variants of kielo: ``kielo+bf16`` (non-quantized weights kept in bf16 instead of peft's fp32 upcast),
  ``kielo+bf16+liger`` (also Liger's RMSNorm, RoPE and SwiGLU/GeGLU kernels), ``kielo+lean`` (fp32 norms and
  residual stream as stock, but embedding and head weights kept in bf16), ``kielo+lean+liger``;
- ``unsloth`` / ``unsloth+nogc``: Unsloth (when installed) with its offloaded gradient checkpointing / none,
  loaded and adapted as its anchor script does, its own loss (``num_items_in_batch``), data b padded as stock,
  starting from stock's LoRA weights (both LoRA matrices, by layer and module): its speed and its gradients'
  cosine against stock's in the same table;
- ``ref``: kielo's path with every matmul in fp32 and TF32 off (same dequantized weights): the yardstick for
  how far each path's gradients, stock's included, are from exact arithmetic (``cos vs ref``).

Data: ``a`` = batch x seq random tokens per step, every position trained; ``b`` = variable-length
instruction-like examples (mean ~300 tokens, tail to max_length, prompt masked), the same examples in every
optimizer step for every path: stock pads micro-batches of 2 to their longest example, kielo packs them into
rows of max_length. tokens/s counts real (non-padding) tokens only.

Each variant runs in its own process (clean peak memory; Liger patches classes globally) and runs its cases
on one loaded model, the LoRA weights reset to the same seeded start for each. A case is DATA[/opt...] with
opts ``nogc`` (no gradient checkpointing), ``gc=N`` (checkpoint the first N layers only), ``mbs=N`` (sequences
per micro-batch for a, packed rows for b; default 2), ``head=chunked|ckpt|liger`` (kielo's loss head: as
shipped, each chunk recomputed in backward, or Liger's fused linear cross-entropy), ``autocast`` (bf16 autocast),
``attn=bf16`` (SDPA on bf16 copies of q, k, v), ``headmm=bf16`` (the chunked head's matmul on bf16 operands),
``profile`` (one extra untimed step under torch.profiler; its top CUDA kernels are printed).

    kielo bench --shape llama8b --plan "stock:a,b kielo:a,b kielo+compute:a,b,a/nogc"
    kielo bench --shape tiny --seq 256 --max-length 256 --plan "stock:a,b kielo:a,b"  # CPU smoke test
    bash bench/run_qlora_bench.sh ARGS  # on a GPU machine: installs the carried wheels, then kielo bench ARGS

Results: a table on stdout and ``results.json`` in --out (default $OUT, else runs/qlora-bench).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kielo.bench.shapes import SHAPES

# The worker and model-building subprocesses run this module again (each variant in a clean process).
MODULE = [sys.executable, "-m", "kielo.bench.qlora"]


@dataclass
class Variant:
    path: str  # "stock" or "kielo"
    bf16: bool = False  # keep non-quantized weights (norms, embeddings, head) in bf16, as loaded
    liger: bool = False  # Liger's RMSNorm, RoPE and SwiGLU (Llama) / GeGLU (Gemma) kernels
    lean: bool = False  # embedding and head weights back in bf16 (exact), norms and residual stream fp32
    reference: bool = False  # fp32 compute everywhere, TF32 off: the closest to exact arithmetic bnb allows
    stream: str = "fp32"  # kielo's training.stream_dtype
    kernels: str = "none"  # kielo's training.kernels
    peft_lora: bool = False  # peft's own LoRA forward (fp32 copies of bf16 inputs) instead of kielo's
    tf32: bool = False  # fp32 matmuls (head, attention, LoRA on an fp32 stream) on TF32 tensor cores
    unsloth_gc: bool = True  # unsloth: its offloaded gradient checkpointing (the variant fixes it at load)
    unfused: bool = False  # kielo's LoRA forward without the fused 4-bit + LoRA node (LoraLinear4bit)


VARIANTS = {
    "stock": Variant("stock"),
    "ref": Variant("kielo", reference=True),
    "kielo": Variant("kielo", stream="auto", kernels="auto"),  # kielo train's defaults
    "kielo+fp32": Variant("kielo"),  # the fp32 stream everywhere (kielo's default before stream_dtype existed)
    "kielo+peftlora": Variant("kielo", stream="auto", kernels="auto", peft_lora=True),
    "kielo+tf32": Variant("kielo", stream="auto", kernels="auto", tf32=True),
    # --training.stream_dtype compute: the bf16 stream (+ Liger when installed) on any family
    "kielo+compute": Variant("kielo", stream="compute", kernels="auto"),
    "kielo+compute+peftlora": Variant("kielo", stream="compute", kernels="auto", peft_lora=True),
    "kielo+unfused": Variant("kielo", stream="auto", kernels="auto", unfused=True),
    "kielo+compute+unfused": Variant("kielo", stream="compute", kernels="auto", unfused=True),
    "unsloth": Variant("unsloth"),
    "unsloth+nogc": Variant("unsloth", unsloth_gc=False),
    "kielo+lean": Variant("kielo", lean=True),
    "kielo+bf16": Variant("kielo", bf16=True),
    "kielo+bf16+liger": Variant("kielo", bf16=True, liger=True),
    "kielo+lean+liger": Variant("kielo", lean=True, liger=True),
}


@dataclass
class Case:
    name: str
    data: str  # "a" (full rows) or "b" (variable-length instruction data)
    gc: int = -1  # layers checkpointed: -1 all, 0 none, N the first N
    mbs: int = 2
    head: str = "chunked"
    autocast: bool = False
    attn_bf16: bool = False  # attention (SDPA) on bf16 copies of q, k, v; the rest as the variant has it
    head_bf16: bool = False  # head matmul on bf16 operands, logits and cross-entropy in fp32
    profile: bool = False  # one extra, untimed step under torch.profiler: top CUDA kernels printed
    compile: bool = False  # torch.compile each decoder layer (stays compiled for the worker's later cases)
    memtrace: bool = False  # record CUDA allocations over the first step; snapshot written next to the results


def parse_case(text: str) -> Case:
    data, *opts = text.split("/")
    if data not in ("a", "b"):
        raise SystemExit(f"case {text!r}: data must be a or b")
    case = Case(text, data)
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "nogc":
            case.gc = 0
        elif key == "gc":
            case.gc = int(value)
        elif key == "mbs":
            case.mbs = int(value)
        elif key == "head" and value in ("chunked", "ckpt", "liger"):
            case.head = value
        elif key == "autocast":
            case.autocast = True
        elif key == "attn" and value == "bf16":
            case.attn_bf16 = True
        elif key == "headmm" and value == "bf16":
            case.head_bf16 = True
        elif key == "profile":
            case.profile = True
        elif key == "compile":
            case.compile = True
        elif key == "memtrace":
            case.memtrace = True
        else:
            raise SystemExit(f"case {text!r}: unknown option {opt!r}")
    return case


# ----------------------------------------------------------------------------------------------- data


def full_examples(steps: int, batch: int, seq: int, vocab: int, seed: int) -> list[list]:
    """Data a: per step, ``batch`` rows of ``seq`` random tokens, every next token trained."""
    from kielo.data.encode import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        rows = torch.randint(0, vocab - 1, (batch, seq), generator=g).tolist()
        out.append([Encoded(r, list(r), 0, seq) for r in rows])
    return out


def instruction_examples(steps: int, per_step: int, max_len: int, vocab: int, seed: int) -> list[list]:
    """Data b: per step, ``per_step`` examples with log-normal lengths (mean ~300, a tail to ``max_len``) whose
    first 20-70% is a prompt (labels -100): the shape of instruction data, in random tokens."""
    from kielo.data.encode import IGNORE, Encoded

    rng = random.Random(seed)
    out, index = [], 0
    for _ in range(steps):
        step = []
        for _ in range(per_step):
            n = max(16, min(max_len, int(rng.lognormvariate(math.log(300) - 0.405, 0.9))))
            ids = [rng.randrange(vocab - 1) for _ in range(n)]
            p = int(n * rng.uniform(0.2, 0.7))
            step.append(Encoded(ids, [IGNORE] * p + ids[p:], p, n - p, index=index))
            index += 1
        out.append(step)
    return out


def micro_batches(examples: list, path: str, mbs: int, packing: bool, max_len: int, pad_id: int) -> list:
    """One optimizer step's examples as kielo Batches: padded groups of ``mbs`` examples, or (kielo with
    packing) the step's examples packed first-fit into rows of ``max_len``, ``mbs`` rows per micro-batch."""
    from kielo.data.batches import collate_packed, collate_padded, pack_rows

    if path == "kielo" and packing:
        rows = pack_rows(examples, max_len)
        return [collate_packed(rows[i : i + mbs], pad_id) for i in range(0, len(rows), mbs)]
    return [collate_padded(examples[i : i + mbs], pad_id) for i in range(0, len(examples), mbs)]


# ---------------------------------------------------------------------------------------------- model


def make_model(folder: Path, shape: str) -> None:
    """Save a random-weight bf16 model of ``shape`` (a subprocess, so the parent never holds GPU memory)."""
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch", "llama")
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM as Model
        from transformers import Gemma3TextConfig as Config
    elif arch == "bloom":
        from transformers import BloomConfig as Config
        from transformers import BloomForCausalLM as Model
    else:
        from transformers import LlamaConfig as Config
        from transformers import LlamaForCausalLM as Model
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Model(Config(**spec, dtype="bfloat16"))
    model.save_pretrained(folder, max_shard_size="4GB")
    print(f"made {shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)


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


def kielo_config(gc: bool = True, compute_dtype: str = "bf16", stream: str = "fp32", kernels: str = "none"):
    from kielo.config.load import from_dict

    return from_dict(
        {
            "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": compute_dtype},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "training": {
                "learning_rate": 1e-4,
                "gradient_checkpointing": gc,
                "optimizer": "adamw",
                "max_grad_norm": 0,
                "stream_dtype": stream,
                "kernels": kernels,
            },
        }
    )


def variant_config(variant: Variant):
    """The kielo config a kielo variant loads with."""
    return kielo_config(compute_dtype="fp32" if variant.reference else "bf16", stream=variant.stream, kernels=variant.kernels)


def variant_precision(variant: Variant, model, device: torch.device):
    """The precision kielo resolves for a kielo variant's config on ``model`` (what its load applied)."""
    from kielo.model.adapter import causal_lm
    from kielo.model.precision import resolve_hardware, resolved_precision

    return resolved_precision(resolve_hardware(variant_config(variant), causal_lm(model).config.model_type, device))


def apply_liger(model_type: str) -> None:
    """Patch Liger's norm, RoPE and MLP kernels into the transformers classes (before the model is built)."""
    from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text, apply_liger_kernel_to_llama

    if model_type == "llama":
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    elif model_type == "gemma3_text":
        apply_liger_kernel_to_gemma3_text(rope=True, rms_norm=True, geglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    else:
        raise SystemExit(f"Liger has no kernels for {model_type}")


UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_unsloth(variant: Variant, folder: Path, max_len: int):
    """Unsloth's 4-bit model and LoRA adapter, set up as its anchor script does (same LoRA settings as stock)."""
    # Unsloth patches transformers and peft: it must be imported before them (so not in sorted order).
    try:
        from unsloth import FastLanguageModel, FastModel  # noqa: I001
    except ImportError as e:
        raise SystemExit(
            f"the unsloth variant needs Unsloth ({e}): install its wheels (unsloth, unsloth_zoo and "
            "their dependencies; bench/NOTES.md, 'Unsloth inside the bench') and run it on a GPU"
        ) from None
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type not in ("llama", "gemma3_text"):
        raise SystemExit(f"the unsloth variant covers Llama and Gemma 3, not {model_type}")
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
        use_gradient_checkpointing="unsloth" if variant.unsloth_gc else False,
        random_state=0,
    )
    fast.for_training(model)
    return model


def load(variant: Variant, folder: Path, device: torch.device, max_len: int = 2048):
    """The variant's model with a fresh LoRA adapter (seeded, so every path starts from the same weights)."""
    if variant.path == "unsloth":
        return load_unsloth(variant, folder, max_len)
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(folder).model_type
    if variant.liger:
        apply_liger(model_type)
    if variant.path == "stock":  # as the anchor: hf_qlora_baseline.py run()
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            quantization_config=bnb,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
            dtype=torch.bfloat16,
            attn_implementation="eager" if model_type == "bloom" else "sdpa",
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", target_modules="all-linear", task_type="CAUSAL_LM")
        )
        model.train()
        return model
    from kielo.model.adapter import add_lora
    from kielo.model.load import load_base_model
    from kielo.model.source import ModelSource

    if variant.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if variant.reference:
        # bnb dequantizes NF4 to the stored bf16 values either way, so the weights equal stock's exactly;
        # only the arithmetic differs: fp32 matmuls without TF32, fp32 attention, head and LoRA.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    config = variant_config(variant)
    model = load_base_model(ModelSource(str(folder)), config, device)
    if variant.bf16:
        # bf16 -> fp32 -> bf16 is exact, so this equals never upcasting (peft's prepare step upcasts).
        for p in model.parameters():
            if p.dtype == torch.float32 and not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if variant.lean:
        # The embedding's output and the head's input are the only places these weights meet the stream; a
        # bf16 embedding yields the same (bf16-valued) numbers, and the head casts its input (see
        # bf16_head_loss_sum, which lean cases use), so only 2 bytes a parameter are kept instead of 4.
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.weight.data = module.weight.data.to(torch.bfloat16)
    torch.manual_seed(0)
    return add_lora(model, config.lora, "peft" if variant.peft_lora else "unfused" if variant.unfused else "fused")


def set_checkpointing(model, layers: int) -> None:
    """Checkpoint all decoder layers (-1), none (0) or the first ``layers`` (both paths load with it on)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, block in enumerate(blocks):
        block.gradient_checkpointing = layers < 0 or i < layers


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)


def lora_key(name: str) -> str:
    """A LoRA weight's place independent of the wrapper's prefix: ``layers.3.self_attn.q_proj.lora_A``."""
    name = name[name.index("layers.") :] if "layers." in name else name
    return name.replace(".default", "").removesuffix(".weight")


def init_from(own: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``own``'s LoRA weights replaced by ``other``'s at the same layer and module (another stack's start)."""
    theirs = {lora_key(n): t for n, t in other.items()}
    missing = sorted({lora_key(n) for n in own} ^ set(theirs))
    if missing:
        raise SystemExit(f"LoRA weights do not pair up between the stacks: {missing[:6]}")
    return {n: theirs[lora_key(n)].to(t.dtype) for n, t in own.items()}


# ------------------------------------------------------------------------------------------ loss heads


def ckpt_loss_sum(model, batch):
    """kielo's trained-position head with each chunk's logits recomputed in backward instead of kept."""
    from torch.utils.checkpoint import checkpoint

    from kielo.train.loss import HEAD_CHUNK, causal_lm, head_logits, trained_hidden

    lm = causal_lm(model)
    h, y, _ = trained_hidden(model, batch)

    def chunk_ce(hc, yc):
        return torch.nn.functional.cross_entropy(head_logits(lm, hc), yc, reduction="sum")

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], HEAD_CHUNK):
        total = total + checkpoint(chunk_ce, h[i : i + HEAD_CHUNK], y[i : i + HEAD_CHUNK], use_reentrant=False)
    return total, int(y.numel())


def bf16_head_loss_sum(model, batch):
    """kielo's chunked trained-position head with the matmul on bf16 operands (fp32 logits, fp32 loss)."""
    import torch.nn.functional as F

    from kielo.train.loss import HEAD_CHUNK, causal_lm, trained_hidden

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


class Bf16Attention:
    """Within the block, transformers' SDPA attention runs on bf16 copies of q, k, v (flash/cuDNN kernels,
    which fp32 has none of) and returns its output in the stream's dtype."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            def attention(module, q, k, v, mask, **kw):
                out, w = sdpa_attention_forward(module, q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16), mask, **kw)
                return out.to(q.dtype), w

            ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
        return self

    def __exit__(self, *exc):
        if self.enabled:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            del ALL_ATTENTION_FUNCTIONS["sdpa"]


# ---------------------------------------------------------------------------------------------- worker


def planned(model, variant: str, case: Case, micro: list) -> dict:
    """kielo's memory planner's estimate for a case that is a kielo configuration (nothing for the others:
    stock, the fp32 reference, lean and per-op experiments), printed beside the measured peak, and the
    planner's inputs (``plan_setup``, with the shape: tests/test_plan.py recomputes the estimate from them)."""
    from kielo.plan.memory import GIB, Setup, estimate
    from kielo.plan.shape import shape_from_config
    from kielo.train.loss import causal_lm

    v = VARIANTS[variant]
    if (
        v.path != "kielo"
        or v.reference
        or v.lean
        or v.peft_lora
        or v.unfused
        or case.gc > 0
        or case.autocast
        or case.attn_bf16
        or case.head_bf16
        or case.head == "ckpt"
        or case.profile
    ):
        return {}
    lm = causal_lm(model)
    precision = variant_precision(v, model, next(model.parameters()).device)
    fused = case.head == "liger" or precision.liger
    batches = [b for mb in micro for b in mb]
    # A mask exists where a row holds several examples (positions restart) or padding.
    masked = any(
        bool((b.position_ids[:, 1:] == 0).any()) if b.position_ids is not None else not bool(b.attention_mask.all()) for b in batches
    )
    setup = Setup(
        stream_bytes=lm.get_input_embeddings().weight.element_size(),
        liger=v.liger or precision.liger,
        fused_head=fused,
        lora_r=16,
        lora_dropout=0.0,
        gradient_checkpointing=case.gc != 0,
        tokens=max(b.input_ids.numel() for b in batches),
        row_width=max(b.input_ids.shape[1] for b in batches),
        trained=max(b.trained_tokens for b in batches),
        masked=masked,
    )
    return {"planned_gib": round(estimate(shape_from_config(lm.config), setup).total / GIB, 2), "plan_setup": asdict(setup)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stock_step(model, micro: list, device: torch.device) -> float:
    """Forward with full logits and the model's loss; normalized by the step's trained tokens.

    The attention mask comes from kielo's padded collation (all ones on data a); the anchor passes none. For
    Llama that is the same computation (transformers skips an all-ones mask); for Gemma 3 it may not be.
    """
    n = sum(b.trained_tokens for b in micro)
    total = 0.0
    for b in micro:
        b = b.to(device)
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, num_items_in_batch=n)
        out.loss.backward()
        total += float(out.loss.detach())
    return total


def run_case(model, variant: str, path: str, case: Case, steps: list, args, device, init: dict, grads_dir: Path) -> dict:
    """Time warm-up + timed optimizer steps of one case; dump the LoRA gradients of the first two steps."""
    import kielo.train.loss as loss
    from kielo.train.optim import build_optimizer
    from kielo.train.packing import packing_support
    from kielo.train.step import accumulate_gradients

    params = trainable(model)
    with torch.no_grad():
        for n, p in params:
            p.copy_(init[n])
            p.grad = None
    if path == "unsloth":
        if case.gc != -1:
            raise SystemExit("unsloth's checkpointing is fixed at load: use the unsloth+nogc variant, not a gc option")
    else:
        set_checkpointing(model, case.gc)
    if case.compile:
        from transformers.modeling_layers import GradientCheckpointingLayer

        for block in model.modules():
            if isinstance(block, GradientCheckpointingLayer):
                block.compile()
    # kielo packs decoders that take position ids, and BLOOM (ALiBi, through a block mask); any other pads.
    packing = path == "kielo" and packing_support(model) is not None
    micro = [micro_batches(ex, path, case.mbs, packing, args.max_length, args.pad_id) for ex in steps]
    if path in ("stock", "unsloth"):
        opt = torch.optim.AdamW([p for _, p in params], lr=1e-4)  # the anchor's optimizer
        step_fn = stock_step
    else:
        opt = build_optimizer([p for _, p in params], kielo_config().training, device)
        # The case's loss head goes into the step as an argument.
        # A lean model's head weight is bf16 while its stream is fp32: its chunked head needs the cast.
        bf16_head = case.head_bf16 or VARIANTS[variant].lean
        default = loss.loss_head(variant_precision(VARIANTS[variant], model, device).liger)
        heads = {"chunked": bf16_head_loss_sum if bf16_head else default, "ckpt": ckpt_loss_sum, "liger": loss.fused_loss_sum}
        step_fn = functools.partial(accumulate_gradients, loss=heads[case.head])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warm = args.warmup_a if case.data == "a" else args.warmup_b
    losses, times = [], []
    for i, mb in enumerate(micro):
        sync(device)
        if case.memtrace and i == 0 and device.type == "cuda":
            torch.cuda.memory._record_memory_history(max_entries=300000)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.autocast), Bf16Attention(case.attn_bf16):
            losses.append(step_fn(model, mb, device))
        sync(device)
        t1 = time.perf_counter()
        if case.memtrace and i == 0 and device.type == "cuda":
            import pickle

            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            name = f"memtrace-{variant}-{case.name.replace('/', '_')}.pickle"
            (Path(args.result).parent / name).write_bytes(pickle.dumps(snap))
        if i < 2:  # not timed: kept for the gradient cosine against stock
            torch.save(
                torch.cat([p.grad.detach().float().cpu().flatten() for _, p in params]),
                grads_dir / f"{variant}-{case.name.replace('/', '_')}-{i}.pt",
            )
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(t1 - t0 + time.perf_counter() - t2)
    timed = times[warm:]
    if case.profile and device.type == "cuda":
        profile_step(model, micro[-1], step_fn, case, device)
    real = [sum(b.real_tokens for b in mb) for mb in micro]
    slots = [sum(b.input_ids.numel() for b in mb) for mb in micro]
    del opt
    return {
        "variant": variant,
        "case": case.name,
        **{k: v for k, v in asdict(case).items() if k != "name"},
        "steps": len(micro),
        "warmup": warm,
        "micro_batches_per_step": len(micro[0]),
        "first_step_s": round(times[0], 3),
        "median_step_s": round(sorted(timed)[len(timed) // 2], 4),
        "tok_s": round(sum(real[warm:]) / sum(timed)),
        "real_tokens_per_step": round(sum(real) / len(real)),
        "padding_pct": round(100 * (1 - sum(real) / sum(slots)), 1),
        "trained_tokens_per_step": round(sum(sum(b.trained_tokens for b in m) for m in micro) / len(micro)),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        **planned(model, variant, case, micro),
        "losses": [round(x, 5) for x in losses],
        "step_times": [round(t, 4) for t in times],
    }


def profile_step(model, micro, step_fn, case: Case, device) -> None:
    """One more step (not timed, gradients discarded) under torch.profiler: where a step's GPU time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.autocast), Bf16Attention(case.attn_bf16):
            step_fn(model, micro, device)
        sync(device)
    for p in model.parameters():
        p.grad = None
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    print(f"PROFILE {case.name}: GPU kernel time {total / 1e3:.0f} ms in one step; top kernels:", flush=True)
    for e in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:25]:
        print(
            f"PROFILE {e.self_device_time_total / 1e3:9.1f} ms {100 * e.self_device_time_total / total:5.1f}% "
            f"x{e.count:<5} {e.key[:110]}",
            flush=True,
        )


def worker(args) -> None:
    """One variant in this process: load once, run its cases, write their results as JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variant = VARIANTS[args.worker]
    t0 = time.perf_counter()
    model = load(variant, Path(args.model_dir), device, max(args.seq, args.max_length))
    load_s = time.perf_counter() - t0
    init = {n: p.detach().cpu().clone() for n, p in trainable(model)}
    # kielo's and stock's seeded peft adapters start equal; Unsloth seeds its own, so it takes stock's.
    stock_init = Path(args.grads_dir) / "lora-init-stock.pt"
    if variant.path == "stock":
        torch.save(init, stock_init)
    elif variant.path == "unsloth":
        if not stock_init.is_file():
            raise SystemExit("the unsloth variant starts from stock's LoRA weights: put stock first in the plan")
        init = init_from(init, torch.load(stock_init))
    vocab = model.config.vocab_size
    args.pad_id = vocab - 1
    results = []
    for text in args.cases.split(","):
        case = parse_case(text)
        if case.data == "a":
            steps = full_examples(args.warmup_a + args.timed_a, args.batch, args.seq, vocab, seed=1)
        else:
            steps = instruction_examples(args.warmup_b + args.timed_b, args.examples_per_step, args.max_length, vocab, seed=2)
        try:
            r = run_case(model, args.worker, variant.path, case, steps, args, device, init, Path(args.grads_dir))
        except torch.cuda.OutOfMemoryError as e:
            r = {"variant": args.worker, "case": text, "error": f"out of memory: {str(e).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        r["load_s"] = round(load_s, 1)
        print("RESULT", json.dumps({k: v for k, v in r.items() if k not in ("losses", "step_times")}), flush=True)
        results.append(r)
        Path(args.result).write_text(json.dumps(results))  # after each case: a later crash keeps these


# ------------------------------------------------------------------------------------------ orchestrator


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton", "unsloth"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def add_parity(results: list[dict], grads_dir: Path) -> None:
    """Per-step |loss difference| and LoRA-gradient cosine of every case against stock on the same data, and
    the gradient cosine against the fp32 reference (``ref``) where it ran: how far each path, stock included,
    is from the same computation done in fp32."""

    def grads(r: dict, i: int) -> Path:
        return grads_dir / f"{r['variant']}-{r['case'].replace('/', '_')}-{i}.pt"

    def cosines(r: dict, other: dict) -> list[float]:
        out = []
        for i in range(2):
            if grads(r, i).exists() and grads(other, i).exists():
                out.append(round(cosine(torch.load(grads(r, i)), torch.load(grads(other, i))), 6))
        return out

    def base_of(name: str) -> dict:
        return {r["data"]: r for r in results if r.get("variant") == name and r.get("case") in ("a", "b")}

    stock, ref = base_of("stock"), base_of("ref")
    for r in results:
        if "error" in r:
            continue
        base = stock.get(r.get("data"))
        if base is not None and r is not base:
            deltas = [abs(x - y) for x, y in zip(r["losses"], base["losses"], strict=False)]
            r["loss_delta"] = [round(d, 5) for d in deltas]
            r["max_loss_delta"] = round(max(deltas), 5)
            r["grad_cosine"] = cosines(r, base)
        exact = ref.get(r.get("data"))
        if exact is not None and r is not exact:
            r["grad_cosine_ref"] = cosines(r, exact)


def table(results: list[dict]) -> str:
    head = (
        f"{'variant':18} {'case':16} {'tok/s':>7} {'vs stock':>8} {'peak GiB':>8} {'planned':>7} {'first s':>7} {'step s':>7} "
        f"{'pad %':>5} {'max |dL|':>8} {'grad cos':>17} {'cos vs ref':>17}"
    )
    lines = [head, "-" * len(head)]
    stock = {r["data"]: r["tok_s"] for r in results if r.get("variant") == "stock" and "tok_s" in r}
    for r in results:
        if "error" in r:
            lines.append(f"{r['variant']:18} {r['case']:16} ERROR {r['error'][:90]}")
            continue
        speedup = f"{r['tok_s'] / stock[r['data']]:.2f}x" if r["data"] in stock else "-"
        cos = ",".join(f"{c:.5f}" for c in r.get("grad_cosine", [])) or "-"
        cos_ref = ",".join(f"{c:.5f}" for c in r.get("grad_cosine_ref", [])) or "-"
        delta = f"{r['max_loss_delta']:.4f}" if "max_loss_delta" in r else "-"
        planned = f"{r['planned_gib']:.2f}" if r.get("planned_gib") is not None else "-"
        lines.append(
            f"{r['variant']:18} {r['case']:16} {r['tok_s']:>7} {speedup:>8} {r['peak_gib'] or 0:>8.2f} {planned:>7} "
            f"{r['first_step_s']:>7.2f} {r['median_step_s']:>7.3f} {r['padding_pct']:>5.1f} {delta:>8} {cos:>17} "
            f"{cos_ref:>17}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    from kielo.bench.command import add_arguments

    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Build the model if needed, run every variant of the plan in its own process, print and save the table."""
    if args.worker:
        worker(args)
        return 0
    work = Path(args.workdir)
    model_dir, grads_dir, out = work / f"model-{args.shape}", work / "grads", Path(args.out)
    grads_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.make:
        make_model(model_dir, args.shape)
        return 0
    if not (model_dir / "config.json").is_file():
        t = time.perf_counter()
        subprocess.run([*MODULE, "--make", "--shape", args.shape, "--workdir", str(work)], check=True)
        print(f"model built in {time.perf_counter() - t:.0f}s", flush=True)
    if "unsloth" in args.plan and not (model_dir / "tokenizer.json").is_file():
        save_stand_in_tokenizer(model_dir)
    passthrough = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("batch", "seq", "max_length", "examples_per_step", "warmup_a", "timed_a", "warmup_b", "timed_b")
    ]
    meta = {
        "shape": args.shape,
        "plan": args.plan,
        "versions": versions(),
        **{
            k: getattr(args, k)
            for k in ("batch", "seq", "max_length", "examples_per_step", "warmup_a", "timed_a", "warmup_b", "timed_b")
        },
    }
    results: list[dict] = []
    for spec in args.plan.split():
        name, _, cases = spec.partition(":")
        reuse = name.startswith("=")  # "=stock": the results an earlier invocation left in the workdir
        name = name.lstrip("=")
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        result_file = work / f"result-{args.shape}-{name}.json"
        if reuse:
            if result_file.is_file():
                results += [{**r, "reused": True} for r in json.loads(result_file.read_text())]
            continue
        result_file.unlink(missing_ok=True)
        cmd = [
            *MODULE,
            "--worker",
            name,
            "--cases",
            cases,
            "--model-dir",
            str(model_dir),
            "--grads-dir",
            str(grads_dir),
            "--result",
            str(result_file),
            *passthrough,
        ]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=args.worker_timeout)
            failed = proc.returncode != 0 and f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            failed = f"timed out after {args.worker_timeout}s"
        print(f"{name}: {time.perf_counter() - t:.0f}s", flush=True)
        done = json.loads(result_file.read_text()) if result_file.is_file() else []
        results += done
        if failed:
            results += [{"variant": name, "case": c, "error": failed} for c in cases.split(",")[len(done) :]]
        add_parity(results, grads_dir)
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps(meta["versions"]))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
