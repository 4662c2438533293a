"""Optional NF4 re-quantization of the merged model for inference, with the held-out loss before and after.

Quantizing *after* the merge is the sound order: the 16-bit merged weights carry the whole update, and
NF4 rounds them once, as it rounded the base for training. The loss on held-out examples (response
tokens only, as training and evaluation score them) shows what that rounding costs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from kielo.config.schema import QuantizationConfig
from kielo.data.records import Example
from kielo.model.bundle import Bundle

log = logging.getLogger(__name__)

NF4 = QuantizationConfig(bits=4, quant_type="nf4", double_quant=True)


def held_out_loss(bundle: Bundle, examples: list[Example], batch_size: int = 4) -> dict:
    """Mean response-token loss of ``bundle.model`` over ``examples``."""
    from kielo.evaluate.loss import encode_for_loss, example_losses

    encoded, _ = encode_for_loss(bundle, examples)
    losses = example_losses(bundle, encoded, batch_size)
    total = sum(s for s, _ in losses.values())
    tokens = sum(n for _, n in losses.values())
    return {"loss": total / max(tokens, 1), "tokens": tokens, "examples": len(losses)}


def load_nf4(folder: Path, dtype: torch.dtype, compute: torch.dtype, device: torch.device):
    """The merged folder with its linear layers quantized to NF4 (bitsandbytes), the rest kept in ``dtype``.

    The 4-bit layers compute in ``compute``; the parts bitsandbytes leaves unquantized (embeddings, norms,
    a tied output head) stay in the merged dtype, so the copy is smaller than the 16-bit folder.
    """
    from transformers import AutoModelForCausalLM

    from kielo.model.load import bnb_config, keep_4bit_layout

    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype,
        quantization_config=bnb_config(NF4, compute),
        device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
    )
    keep_4bit_layout(model)  # the held-out loss is the NF4 layers' ``compute`` function, not a bf16 CPU kernel's
    return model.eval()


def requantize(merged_bundle: Bundle, folder: Path, out: Path, examples: list[Example], source: str, dtype: torch.dtype) -> dict:
    """Write an NF4 copy of the merged model in ``folder`` (saved in ``dtype``) to ``out``; report the held-out
    loss before and after."""
    from kielo.runs.folder import write_side_files

    before = held_out_loss(merged_bundle, examples)
    compute = next(merged_bundle.model.parameters()).dtype
    nf4 = load_nf4(folder, dtype, compute, merged_bundle.device)
    nf4_bundle = dataclasses.replace(merged_bundle, model=nf4)
    after = held_out_loss(nf4_bundle, examples)
    nf4.save_pretrained(out, safe_serialization=True)
    write_side_files(nf4_bundle, out)
    del nf4
    log.info("NF4 copy: held-out loss %.4f -> %.4f (%+.4f)", before["loss"], after["loss"], after["loss"] - before["loss"])
    return {
        "folder": out.name,
        "quantization": dataclasses.asdict(NF4),
        "held_out": source,
        "loss_merged": before["loss"],
        "loss_nf4": after["loss"],
        "loss_change": after["loss"] - before["loss"],
        "tokens": before["tokens"],
        "examples": before["examples"],
    }
