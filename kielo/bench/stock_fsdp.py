"""The stock FSDP-QLoRA recipe the multi-GPU bench compares kielo's with: transformers + peft + bitsandbytes
with the 4-bit weights stored in bf16 (``bnb_4bit_quant_storage``), sharded by accelerate's FSDP2 plugin
(``fully_shard`` per decoder layer, embedding and head units, the root), its activation checkpointing
(``checkpoint_wrapper`` around each decoder layer) and ``mixed_precision="bf16"``, as the peft and accelerate
FSDP-QLoRA guides set it up.

What differs from the single-GPU stock anchor (:func:`kielo.bench.models.load_stock`), as TRL does for
"sharded QLoRA": no ``prepare_model_for_kbit_training``, whose fp32 upcast of the frozen norms and embedding
would give a layer's parameters mixed dtypes, and the model's own gradient checkpointing off (accelerate's
wraps the layers instead).

accelerate applies FSDP only on CUDA (on CPU its ``prepare`` wraps the model in DDP instead), so this recipe runs
on GPUs only; :func:`shard_stock` says so on a CPU run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kielo.errors import KieloError


def load_stock_fsdp(folder: Path, device: torch.device):
    """The peft model on a 4-bit base stored in bf16, on this rank's device (every rank loads the whole 4-bit
    model, then sharding frees all but its part)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=bnb,
        device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model.train()
    return model


def shard_stock(model, device: torch.device):
    """The model and its AdamW (lr 1e-4) after accelerate's ``prepare`` with the FSDP2 plugin: the stock
    recipe's sharding, mixed precision and activation checkpointing."""
    if device.type != "cuda":
        raise KieloError(
            "stock+fsdp runs on GPUs only: accelerate applies its FSDP2 plugin on CUDA (on CPU it wraps the model in DDP)",
            "run stock+fsdp on a multi-GPU machine; on CPU bench kielo+fsdp alone",
        )
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    from kielo.plan.shape import _decoder_layers

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[type(_decoder_layers(model)[0]).__name__],
        activation_checkpointing=True,
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
    )
    accelerator = Accelerator(mixed_precision="bf16", fsdp_plugin=plugin)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return accelerator.prepare(model, optimizer)
