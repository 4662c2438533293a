"""Load a tokenizer and a (quantized) base model, ready for LoRA training or inference."""

from __future__ import annotations

import logging

import torch

from kielo.config.schema import Config, QuantizationConfig
from kielo.errors import KieloError
from kielo.model.device import compute_dtype
from kielo.model.precision import Precision, apply_precision, resolve_hardware, resolved_precision
from kielo.model.source import ModelSource

log = logging.getLogger(__name__)

PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>", "<|finetune_right_pad|>")


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """Load a tokenizer and give it a pad token distinct from its end token, without adding tokens.

    Adding a token would need a new embedding row, and the embeddings are frozen; so an existing unused
    token is reused (``<pad>``, a reserved or ``unused`` token), and only as a last resort the unk token.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise KieloError(f"cannot load a tokenizer from {path}: {e}", "check the model name or folder") from None
    tok.padding_side = padding_side
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return tok
    vocab = tok.get_vocab()
    candidates = [t for t in PAD_CANDIDATES if t in vocab]
    candidates += sorted((t for t in vocab if "reserved" in t or t.startswith("<unused")), key=lambda t: vocab[t])
    if tok.unk_token is not None:
        candidates.append(tok.unk_token)
    for cand in candidates:
        if vocab[cand] != tok.eos_token_id:
            tok.pad_token = cand
            return tok
    raise KieloError(
        f"the tokenizer of {path} has no unused token to pad with",
        "use a tokenizer with a pad, reserved or unk token (kielo never adds tokens: embeddings are frozen)",
    )


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_weight_bytes(model_config, bits: int, dtype: torch.dtype) -> int:
    """Bytes the base weights take once loaded: linear layers at ``bits``, the rest at ``dtype``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        shell = AutoModelForCausalLM.from_config(model_config)
    elem = torch.finfo(dtype).bits // 8
    total = 0
    head = shell.get_output_embeddings()
    for module in shell.modules():
        for p in module.parameters(recurse=False):
            quantized = bits and isinstance(module, torch.nn.Linear) and module is not head
            # 4-bit: half a byte plus ~3% for (double-quantized) block scales.
            total += int(p.numel() * (bits / 8 * 1.03)) if quantized else p.numel() * elem
    return total


def check_fits(
    model_config,
    bits: int,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
    fix: str = "use a smaller model, --quantization.bits 4, or a machine with more memory",
    extra_bytes: int = 0,
) -> None:
    """Fail before loading when the weights (plus ``extra_bytes`` of working memory) plainly exceed what is free."""
    need = estimate_weight_bytes(model_config, bits, dtype) + extra_bytes
    have = _available_memory(device)
    if need > have:
        gib = 2**30
        raise KieloError(
            f"{name} needs about {need / gib:.1f} GiB for its weights ({bits or 'no'}-bit)"
            f"{' and working memory' if extra_bytes else ''} but only "
            f"{have / gib:.1f} GiB of {'GPU' if device.type == 'cuda' else 'RAM'} is free",
            fix,
        )


def bnb_config(q: QuantizationConfig, dtype: torch.dtype, storage: torch.dtype = torch.uint8):
    """The transformers BitsAndBytesConfig for ``quantization.*`` (None when bits == 0); ``storage``: the dtype
    the packed 4-bit weights are stored in (the compute dtype for FSDP, which shards floating tensors)."""
    if q.bits == 0:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise KieloError("4/8-bit bases need bitsandbytes", "pip install bitsandbytes, or --quantization.bits 0") from None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=storage,
    )


def load_model_config(source: ModelSource, trust_remote_code: bool = False):
    """The model's transformers config (no weights); a name that resolves to nothing is a clear error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0]
        fix = "check the model name; hub ids need network access (or a local folder / .gguf file)"
        if "trust_remote_code" in str(e):
            fix = "this model needs its own code: set model.trust_remote_code: true if you trust it"
        raise KieloError(f"cannot load model config from {source.path}: {msg}", fix) from None


def empty_model(model_config, quantization_config, dtype: torch.dtype, trust_remote_code: bool = False):
    """The module tree ``from_pretrained`` builds for ``model_config`` (4-bit layers included, by the same
    quantizer), every parameter and buffer on the meta device: no weights are read or allocated. Its shapes
    are those before quantization; :mod:`kielo.train.fsdp_load` gives it a loaded model's."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype, trust_remote_code=trust_remote_code)
    if quantization_config is not None:
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
        quantizer.preprocess_model(model=model, dtype=dtype, device_map={"": "meta"}, checkpoint_files=None)
        model.hf_quantizer = quantizer
        quantizer.postprocess_model(model)
    return model


def load_base_model(
    source: ModelSource,
    config: Config,
    device: torch.device,
    for_training: bool = True,
    precision: Precision | None = None,
    weights: bool = True,
):
    """Load the frozen base model quantized per ``config.quantization``, on ``device``; for training, in
    ``precision`` (default: what :func:`~kielo.model.precision.resolve_hardware` resolves ``config`` to).
    ``weights=False``: the same model prepared the same way, on the meta device (:func:`empty_model`), for a
    rank that receives its weights from rank 0 (:mod:`kielo.train.fsdp_load`)."""
    from transformers import AutoModelForCausalLM

    trust = config.model.trust_remote_code
    model_config = load_model_config(source, trust)
    dtype = compute_dtype(config.quantization, device)
    # FSDP shards floating tensors only: the packed 4-bit bytes are stored in the compute dtype for it.
    quantization = bnb_config(config.quantization, dtype, dtype if config.training.distributed == "fsdp" else torch.uint8)
    if weights:
        check_fits(model_config, config.quantization.bits, dtype, device, source.path)
        device_map = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, trust_remote_code=trust, quantization_config=quantization, device_map=device_map
        )
    else:
        model = empty_model(model_config, quantization, dtype, trust)
    if config.quantization.bits == 4:
        keep_4bit_layout(model)
    model.config.use_cache = not for_training
    for p in model.parameters():
        p.requires_grad_(False)
    if for_training:
        if config.quantization.bits:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=config.training.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif config.training.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        from kielo.model.offload import model_layers, model_width, offload_on, offloaded_bytes, set_checkpoint_offload

        precision = precision or resolved_precision(resolve_hardware(config, model_config.model_type, device))
        width = model_width(model_config)
        tokens = config.training.micro_batch_size * config.data.max_length  # the widest micro-batch it may see
        pinned = offloaded_bytes(model_layers(model_config), tokens, width, precision.stream.itemsize)
        if offload_on(config.training, device.type, width, pinned):
            set_checkpoint_offload(model, True)
            log.info("checkpointed layer inputs in pinned host memory (checkpoint_offload %s)", config.training.checkpoint_offload)
        apply_precision(model, precision)
        # transformers skips gradient checkpointing silently in eval mode; training must be in train mode.
        model.train()
    else:
        model.eval()
        if device.type == "cpu" and config.quantization.bits == 4:
            dequantize_for_cpu_inference(model)
    return model


def set_gradient_checkpointing(model, on: bool, offload: bool = False) -> None:
    """Turn recomputation on (non-reentrant, as at load; layer inputs in host memory with ``offload``) or off
    on a loaded training model."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if offload:
            from kielo.model.offload import set_checkpoint_offload

            set_checkpoint_offload(model, True)
    else:
        model.gradient_checkpointing_disable()


def keep_4bit_layout(model) -> int:
    """Stop bitsandbytes from repacking the 4-bit weights for its bf16 CPU kernel; returns how many layers.

    From bitsandbytes 0.49 on, a ``Linear4bit`` on a CPU with AVX512-BF16 rewrites its weight in place into
    another layout at its first eval-mode forward without gradients, and from then on multiplies in bf16
    (inputs and scales rounded to bf16: a tiny Llama's logits moved by 2.6e-3) through an op without a
    backward, even back in train mode: after a validation pass the frozen layers pass no gradient to the
    layers below them, a bias added in place raises under autograd, and ``dequantize_4bit`` of the repacked
    weight returns wrong values; saving a state dict converts it back, so a run's numbers also depend on
    when it checkpointed. Keeping the layout makes every forward the ``quantization.compute_dtype`` matmul
    that training differentiates. Older releases lack the switch (and the repacking).
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def dequantize_4bit_weight(layer) -> torch.Tensor:
    """A bitsandbytes 4-bit layer's weight as a dense (out, in) matrix in its quantization's dtype (a copy)."""
    import bitsandbytes.functional as bnbf

    # Under FSDP2 the unsharded weight is a plain Parameter without its quant_state; the layer keeps a copy.
    quant_state = getattr(layer.weight, "quant_state", None) or layer.quant_state
    return bnbf.dequantize_4bit(layer.weight.data, quant_state)


def dequantize_for_cpu_inference(model) -> bool:
    """Replace each 4-bit linear layer by a plain one holding its dequantized weight, when that fits in RAM.

    bitsandbytes on CPU dequantizes every weight at every forward, so generating token by token with a 4-bit
    model is several times slower than with a plain one. The dequantized weight is exactly what that
    forward multiplies by, so the model computes the same function as the 4-bit one (a test checks the
    logits), still the base its adapters were trained on, at a plain model's speed. Returns whether it did.
    """
    import bitsandbytes as bnb

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        return False
    need = sum(m.in_features * m.out_features * torch.finfo(m.compute_dtype or torch.float32).bits // 8 for _, m in layers)
    if need > 0.5 * _available_memory(torch.device("cpu")):
        log.info("keeping the 4-bit layers (dequantized they would need %.1f GiB); generation will be slow", need / 2**30)
        return False
    for name, m in layers:
        dtype = m.compute_dtype or torch.float32
        weight = dequantize_4bit_weight(m).to(dtype)
        plain = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
        plain.weight = torch.nn.Parameter(weight, requires_grad=False)
        if m.bias is not None:
            plain.bias = torch.nn.Parameter(m.bias.data.to(dtype), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    log.info("4-bit weights dequantized once for CPU inference (%d layers, %.1f GiB)", len(layers), need / 2**30)
    return True


def warn_untrained_template_tokens(model, tokenizer, template_text: str) -> list[str]:
    """Warn when the template uses special tokens whose input embeddings look untrained.

    Base models often ship chat tokens (``<start_of_turn>``, ``<|im_start|>``) that pre-training never
    used; their embedding rows stay near their initialisation, and a frozen embedding can't learn them.
    """
    specials = [t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t and t in template_text]
    emb = model.get_input_embeddings().weight
    norms = emb.detach().float().norm(dim=-1)
    median = norms.median()
    suspicious = []
    for tok in dict.fromkeys(specials):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and 0 <= tid < len(norms) and norms[tid] < 0.2 * median:
            suspicious.append(tok)
    if suspicious:
        log.warning(
            "The template uses token(s) %s whose embeddings look untrained (norm far below the median); "
            "consider --data.template builtin",
            ", ".join(suspicious),
        )
    return suspicious


def describe_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the parameters they stand for."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None or p.dtype == torch.uint8:
            n *= 2  # bitsandbytes packs two 4-bit values per byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
