"""Check a written GGUF file by reading it back: with transformers' GGUF loader always, with llama.cpp when present.

transformers rebuilds the model from the file alone (its metadata becomes the config, llama.cpp's tensor
layout is undone), so matching logits prove the names, the layout changes and the hyperparameters
round-trip. The tokenizer is rebuilt from ``tokenizer.ggml.*`` and must encode the sample texts to the same
ids. When ``llama-cpp-python`` is installed, llama.cpp itself loads the file and its greedy tokens are
compared too; otherwise the report calls the export "transformers-verified".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import torch

from kielo.merge.options import TOLERANCES
from kielo.merge.verify import Reference, compare

log = logging.getLogger(__name__)

# A lossless file (f32, or the merged dtype itself) holds exactly the merged weights: logits may differ only
# by summation order. A narrower float type rounds the weights once more, as a merge into that dtype would
# (so the merge tolerances apply); Q8_0 rounds every weight to 8 bits per 32-wide block (measured on the
# merged Gemma 3 270M: max 2.5, greedy picks agreeing at 87 of 91 positions).
GGUF_TOLERANCE = {"exact": 1e-3, "f16": TOLERANCES["fp16"], "bf16": TOLERANCES["bf16"], "q8_0": 5.0}

# Settings the file does not carry and transformers' reader fills with its defaults. llama.cpp derives
# them from what the file does carry (Gemma 3 scales queries by 1/sqrt(key_length)); export checked they
# follow that rule, so they are set from the merged model's config before comparing.
NOT_IN_FILE = {"gemma3_text": ("query_pre_attn_scalar",)}
# llama.cpp computes in its own precision (f16 K/V cache, its own kernels): answers may part at a near-tie.
LLAMA_CPP_TIE = 0.5


def load_with_transformers(path: Path, merged_config, dtype: torch.dtype, device: torch.device):
    """The GGUF file as a transformers model (weights unpacked to plain tensors in ``dtype``) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Read from a folder holding nothing but the file: transformers would otherwise also pick up the HF
    # tokenizer files beside it, and the check must show what the file alone carries.
    with tempfile.TemporaryDirectory(prefix="kielo-gguf-") as alone:
        name = path.name
        os.symlink(path.resolve(), Path(alone) / name)
        config = AutoConfig.from_pretrained(alone, gguf_file=name)
        for key in NOT_IN_FILE.get(merged_config.model_type, ()):
            if hasattr(merged_config, key):
                setattr(config, key, getattr(merged_config, key))
        model = AutoModelForCausalLM.from_pretrained(
            alone,
            gguf_file=name,
            config=config,
            dtype=dtype,
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
        )
        tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=name)
    return model.eval(), tokenizer


def tokenizer_roundtrip(original, rebuilt, texts: list[str]) -> dict:
    """Whether the tokenizer rebuilt from the file encodes ``texts`` to the same ids and keeps the template."""
    same = sum(original(t, add_special_tokens=False)["input_ids"] == rebuilt(t, add_special_tokens=False)["input_ids"] for t in texts)
    return {
        "texts": len(texts),
        "identical_ids": same,
        "chat_template": (rebuilt.chat_template or None) == (original.chat_template or None),
        "passed": same == len(texts) and (rebuilt.chat_template or None) == (original.chat_template or None),
    }


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_with_llama_cpp(path: Path, reference: Reference) -> dict:
    """Greedy tokens from llama.cpp on the reference prompts, compared with the merged model's answers.

    Prompts are given as token ids, so tokenizer differences can't hide or fake weight problems. Where an
    answer parts from the merged model's, the merged model's own logits at that point say whether it was a
    near-tie (both tokens within ``LLAMA_CPP_TIE`` of each other) or a real disagreement.
    """
    from llama_cpp import Llama

    n_ctx = max(len(s) for s in reference.sequences) + 8
    llm = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
    stops = set(reference.generate_kwargs.get("eos_token_id") or [])
    identical = near_ties = disagreements = 0
    for i, seq in enumerate(reference.sequences):
        want, start = reference.answer(i), reference.prompt_lengths[i]
        got: list[int] = []
        llm.reset()
        for tok in llm.generate(seq[:start], temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
            got.append(int(tok))
            if tok in stops or len(got) >= len(want):
                break
        if got == want:
            identical += 1
            continue
        k = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        if k is None:  # one answer is a prefix of the other: they parted where one of them stopped
            disagreements += 1
            continue
        row = reference.logits[i][start - 1 + k].float()
        if float(row[want[k]] - row[got[k]]) <= 2 * LLAMA_CPP_TIE:
            near_ties += 1
        else:
            disagreements += 1
    return {
        "sequences": len(reference.sequences),
        "identical_answers": identical,
        "near_ties": near_ties,
        "disagreements": disagreements,
        "passed": disagreements == 0,
    }


def verify_gguf(
    path: Path,
    merged_config,
    reference: Reference,
    tokenizer,
    texts: list[str],
    gguf_type: str,
    lossless: bool,
    dtype: torch.dtype,
    device: torch.device,
) -> dict:
    """Read ``path`` back and compare it with the merged model (``reference`` holds the merged model's logits)."""
    tolerance = GGUF_TOLERANCE["exact" if lossless else gguf_type]
    model, rebuilt = load_with_transformers(path, merged_config, dtype, device)
    result, _ = compare(model, reference, tolerance, device)
    del model
    result["tokenizer"] = tokenizer_roundtrip(tokenizer, rebuilt, texts)
    result["not_in_file"] = [k for k in NOT_IN_FILE.get(merged_config.model_type, ()) if hasattr(merged_config, k)]
    verified = ["transformers"]
    if llama_cpp_available():
        result["llama_cpp"] = check_with_llama_cpp(path, reference)
        verified.append("llama.cpp")
    result["verified_with"] = verified
    result["status"] = "llama.cpp-verified" if "llama.cpp" in verified else "transformers-verified"
    result["passed"] = result["passed"] and result["tokenizer"]["passed"] and result.get("llama_cpp", {}).get("passed", True)
    return result
