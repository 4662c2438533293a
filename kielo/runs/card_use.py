"""The model card's "How to use it": plain transformers + peft code and the kielo commands for one adapter.

The code is written for the adapter's own settings (the quantization it trained on, its folder), so it
runs as shown; a test executes it.
"""

from __future__ import annotations

from kielo.model import default
from kielo.model.provenance import BaseProvenance
from kielo.report.blocks import Block, Paragraph

TORCH_DTYPES = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}


def _quantization_lines(config: dict) -> tuple[list[str], str]:
    """The lines that build the base's quantization config, and the arguments ``from_pretrained`` gets."""
    q = config.get("quantization") or {}
    dtype = TORCH_DTYPES.get(q.get("compute_dtype"), "torch.bfloat16")
    if q.get("bits", 4) == 4:
        lines = [
            "quant = BitsAndBytesConfig(",
            "    load_in_4bit=True,",
            f'    bnb_4bit_quant_type="{q.get("quant_type", "nf4")}",',
            f"    bnb_4bit_use_double_quant={bool(q.get('double_quant', True))},",
            f"    bnb_4bit_compute_dtype={dtype},",
            ")",
        ]
        return lines, f"quantization_config=quant, dtype={dtype}"
    if q.get("bits") == 8:
        return ["quant = BitsAndBytesConfig(load_in_8bit=True)"], "quantization_config=quant"
    return [], f"dtype={dtype}"


def transformers_code(config: dict, base: BaseProvenance, location: str) -> str:
    """Python that loads the base as the adapter trained on it, puts the adapter on and answers one prompt."""
    quant, args = _quantization_lines(config)
    base_path = base.path if base.name == default.ALIAS or not base.hub_id else base.hub_id
    comment = (
        "  # the embedded default as kielo converted it (its first use creates this folder)" if base.name == default.ALIAS else ""
    )
    imports = (
        "AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig"
        if quant
        else ("AutoModelForCausalLM, AutoTokenizer, GenerationConfig")
    )
    lines = [
        "import torch",
        "from peft import PeftModel",
        f"from transformers import {imports}",
        "",
        f"base_path = {base_path!r}{comment}",
        f"adapter_path = {location!r}",
        *quant,
        f'base = AutoModelForCausalLM.from_pretrained(base_path, {args}, device_map="auto")',
        "model = PeftModel.from_pretrained(base, adapter_path).eval()",
        "# The adapter folder's tokenizer carries the training prompt format; its generation config stops at the trained end token.",
        "tokenizer = AutoTokenizer.from_pretrained(adapter_path)",
        "generation = GenerationConfig.from_pretrained(adapter_path)",
        'messages = [{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}]',
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
        'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)',
        "with torch.no_grad():",
        "    output = model.generate(**inputs, generation_config=generation)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
    ]
    return "\n".join(lines)


def usage_blocks(config: dict, base: BaseProvenance, location: str) -> list[Block]:
    """The card's usage section for the adapter at ``location``."""
    commands = "\n".join(
        [
            f'kielo prompt --adapter {location} "Mikä on Suomen pääkaupunki?"',
            f"kielo prompt --adapter {location} --chat",
            f"kielo compare --model {location} --data HELD_OUT.jsonl --output_dir REPORT_DIR",
            f"kielo merge {location} --output_dir MERGED_DIR",
        ]
    )
    return [
        Paragraph("With plain transformers and peft:"),
        Paragraph(f"```python\n{transformers_code(config, base, location)}\n```", only="markdown"),
        Paragraph("With kielo (the folder names its base, prompt format and generation settings):"),
        Paragraph(f"```bash\n{commands}\n```", only="markdown"),
    ]
