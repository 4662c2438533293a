"""The bench's models: a random-weight model in a real shape (speed and memory don't depend on weight values),
and each stack loaded on it with a fresh, seeded LoRA adapter (NF4 + double quant, bf16 compute, r=16 alpha=32
on every linear projection)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kielo.bench.cases import Variant
from kielo.bench.shapes import SHAPES


@dataclass
class Loaded:
    """A stack's adapted model, how its steps lay out data, and (kielo) the training path its steps take."""

    model: torch.nn.Module
    layout: str  # kielo.bench.data.LAYOUTS
    path: object = None  # kielo.train.step.TrainingPath for the kielo stack, None for the others


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
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:  # the caller's default dtype back afterwards (a test process goes on to train in fp32)
        with torch.device(build_device(Model, Config(**spec, dtype="bfloat16"))):
            model = Model(Config(**spec, dtype="bfloat16"))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder, max_shard_size="4GB")
    print(f"made {shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)


def build_device(model_class, config) -> str:
    """Where to initialise the random weights: the GPU (fast) when their bf16 bytes fit in 80% of its free
    memory, else the CPU (a 70B shape's 141 GB fit no card)."""
    if not torch.cuda.is_available():
        return "cpu"
    with torch.device("meta"):
        n = sum(p.numel() for p in model_class(config).parameters())
    return "cuda" if 2 * n < 0.8 * torch.cuda.mem_get_info()[0] else "cpu"


def kielo_config(
    gc: bool = True,
    compute_dtype: str = "bf16",
    stream: str = "fp32",
    kernels: str = "none",
    offload: str = "auto",
    distributed: str = "ddp",
    attention: str = "auto",
):
    """The kielo configuration of the bench's settings (those of the stock anchor scripts)."""
    from kielo.config.load import from_dict

    return from_dict(
        {
            "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": compute_dtype},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "training": {
                "learning_rate": 1e-4,
                "gradient_checkpointing": gc,
                "checkpoint_offload": offload,
                "optimizer": "adamw",
                "max_grad_norm": 0,
                "stream_dtype": stream,
                "kernels": kernels,
                "attention": attention,
                "distributed": distributed,
            },
        }
    )


def training_precision(config, folder: Path, device: torch.device):
    """The training precision ``config`` resolves to for the model in ``folder`` on ``device``, as ``kielo train``
    resolves it (the one place the bench decides it)."""
    from transformers import AutoConfig

    from kielo.model.precision import resolve_hardware, resolved_precision

    return resolved_precision(resolve_hardware(config, AutoConfig.from_pretrained(folder).model_type, device))


def load_stock(folder: Path, device: torch.device):
    """transformers + peft + bitsandbytes as the anchor (hf_qlora_baseline.py run()) sets them up."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=bnb,
        device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        dtype=torch.bfloat16,
        attn_implementation="eager" if AutoConfig.from_pretrained(folder).model_type == "bloom" else "sdpa",
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


def load_kielo(variant: Variant, folder: Path, device: torch.device) -> Loaded:
    """kielo's training path as ``kielo train`` builds it (load_base_model, the resolved TrainingPath, add_lora),
    with the variant's research change, if any, to the base model before the adapter goes on."""
    from kielo.model.adapter import add_lora
    from kielo.model.load import load_base_model
    from kielo.model.source import ModelSource
    from kielo.train.packing import packing_support
    from kielo.train.step import training_path

    if variant.tf32 is not None:
        # "high" lets fp32 matmuls (head, attention, LoRA on an fp32 stream) use TF32; "highest" is torch's default.
        torch.set_float32_matmul_precision("high" if variant.tf32 else "highest")
    config = kielo_config(
        compute_dtype=variant.compute_dtype,
        stream=variant.stream,
        kernels=variant.kernels,
        offload=variant.offload,
        distributed=variant.distributed or "ddp",
        attention=variant.attention,
    )
    path = training_path(training_precision(config, folder, device), variant.lora_forward)
    model = load_base_model(ModelSource(str(folder)), config, device, precision=path.precision)
    torch.manual_seed(0)
    model = add_lora(model, config.lora, path.lora_forward)
    if variant.adjust is not None:  # after the adapter, so that it can change how the LoRA layers compute
        path = variant.adjust(model, path)
    # kielo packs decoders that take position ids, and BLOOM (ALiBi, through a block mask); any other pads.
    return Loaded(model, "packed" if packing_support(model) is not None else "padded", path)


def load(variant: Variant, folder: Path, device: torch.device, max_len: int = 2048) -> Loaded:
    """The variant's model with a fresh LoRA adapter (seeded, so every stack starts from the same weights)."""
    if variant.stack == "unsloth":
        from kielo.bench.unsloth import load_unsloth

        return Loaded(load_unsloth(folder, max_len, variant.unsloth_gc), variant.unsloth_layout)
    if variant.stack == "stock" and variant.distributed == "fsdp":
        from kielo.bench.stock_fsdp import load_stock_fsdp

        return Loaded(load_stock_fsdp(folder, device), "padded")
    if variant.stack == "stock":
        return Loaded(load_stock(folder, device), "padded")
    return load_kielo(variant, folder, device)


def set_checkpointing(model, layers: int) -> None:
    """Checkpoint all decoder layers (-1), none (0) or the first ``layers`` (both paths load with it on)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for i, block in enumerate(blocks):
        block.gradient_checkpointing = layers < 0 or i < layers


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable (LoRA) parameters by name, in name order."""
    return sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
