"""The merge's GGUF step: write the file, quantize it, check everything, write Ollama Modelfiles.

With llama.cpp (:mod:`kielo.merge.llama_cpp`) the merged folder is converted by llama.cpp's own
``convert_hf_to_gguf.py`` (kielo's writer only where the converter refuses the model), quantized with
``llama-quantize``, and checked in llama.cpp (:mod:`kielo.merge.gguf_llama_cpp`). Without it, kielo's writer
makes the file and transformers' GGUF reader checks it (:mod:`kielo.merge.gguf_verify`), as the report says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kielo.errors import KieloError
from kielo.merge.verify import check

log = logging.getLogger(__name__)

FIX = "re-run with --debug and report it; the HF folder is fine: convert it with llama.cpp's convert_hf_to_gguf.py meanwhile"


def _write(job, work: Path, merged, tokenizer, template, path: Path) -> dict:
    """The first (float, or kielo's q8_0) file: llama.cpp's converter when there, else kielo's writer."""
    from kielo.merge.gguf_export import write_gguf
    from kielo.merge.llama_cpp import convert

    if job.llama_cpp is not None:
        try:
            convert(job.llama_cpp, work, path, job.gguf_type)
            return {
                "file": path.name,
                "type": job.gguf_type,
                "writer": "llama.cpp convert_hf_to_gguf.py",
                "bytes": path.stat().st_size,
            }
        except KieloError as e:
            path.unlink(missing_ok=True)
            reason = e.message.splitlines()[-1]
            log.warning("llama.cpp's converter refused this model (%s): writing the GGUF with kielo's writer", reason)
    info = write_gguf(merged, tokenizer, path, job.gguf_type, job.output.name, template.end_token_id, template.chat_template)
    info["writer"] = "kielo"
    if job.llama_cpp is not None:
        info["converter_refused"] = reason
    return info


def _check_in_llama_cpp(job, path: Path, info: dict, tokenizer, template, texts, reference, examples, encoder) -> None:
    """The lossless file must reproduce the merged model in llama.cpp; each quantized copy is measured."""
    from kielo.data.template import render
    from kielo.merge.gguf_llama_cpp import END_PROMPTS, adds_bos, check_greedy, check_tokenizer, measure_files, prompt_text
    from kielo.merge.llama_cpp import quantize

    ll = job.llama_cpp
    end_ids = set(reference.generate_kwargs.get("eos_token_id") or []) | {template.end_token_id}
    log.info("llama.cpp: tokenizing %d texts and answering %d prompts with %s", len(texts), len(reference.sequences), path.name)
    tok = check_tokenizer(ll, path, tokenizer, texts)
    greedy = check_greedy(ll, path, tokenizer, reference, end_ids, template.end_token_id)
    info["llama_cpp"] = {"tokenizer": tok, "greedy": greedy, "passed": tok["passed"] and greedy["passed"]}
    if not info["llama_cpp"]["passed"]:
        raise KieloError(f"the GGUF check in llama.cpp ({path.name}) failed: {json.dumps(info['llama_cpp'])}", FIX)
    quantized = {}
    for kind in job.gguf_quants:
        q = path.with_name(f"{job.output.name}-{kind}.gguf")
        log.info("llama-quantize: %s", q.name)
        quantize(ll, path, q, kind)
        quantized[kind] = q
    held = [render(tokenizer, template, ex.messages) for ex in examples]
    strip_bos = adds_bos(path)
    prompts = [prompt_text(tokenizer, encoder.prompt_ids(ex.prompt_messages), strip_bos) for ex in examples[:END_PROMPTS]]
    measured = measure_files(ll, path, quantized, held, prompts, tokenizer)
    info["quality"] = measured["lossless"]
    info["quantized"] = [{"file": p.name, "type": kind, "bytes": p.stat().st_size, **measured[kind]} for kind, p in quantized.items()]


def write_first(job, work: Path, merged, tokenizer, template) -> tuple[Path, dict]:
    """Write the first GGUF file of ``merged`` (saved in ``work``); the caller then releases the model."""
    path = work / f"{job.output.name}-{job.gguf_type}.gguf"
    log.info("writing %s", path.name)
    return path, _write(job, work, merged, tokenizer, template, path)


def finish_gguf(job, path: Path, info: dict, config, tokenizer, template, encoder, examples, held_out: str, reference) -> dict:
    """Check the written file (in llama.cpp, or with transformers' reader without it), quantize it, write the
    Modelfiles; returns the report's GGUF section."""
    from kielo.data.template import render
    from kielo.merge.gguf_export import LOSSLESS_FOR
    from kielo.merge.gguf_verify import verify_gguf
    from kielo.merge.llama_cpp import absent_note
    from kielo.merge.modelfile import write_modelfile

    texts = [render(tokenizer, template, ex.messages) for ex in examples[: job.samples]]
    lossless = job.gguf_type in ("f32", LOSSLESS_FOR[job.dtype])
    if job.llama_cpp is not None and lossless:
        _check_in_llama_cpp(job, path, info, tokenizer, template, texts, reference, examples, encoder)
        info.update(status="llama.cpp-verified", verified_with=["llama.cpp"], passed=True)
    else:
        note = absent_note() if job.llama_cpp is None else f"{job.gguf_type} is not lossless: checked against the merged model"
        log.info("%s; reading %s back with transformers' GGUF loader", note, path.name)
        info["llama_cpp_note"] = note
        info.update(verify_gguf(path, config, reference, tokenizer, texts, job.gguf_type, lossless, job.compute, job.device))
        check(info, f"the GGUF check ({job.gguf_type})", FIX)
    info["modelfiles"] = [write_modelfile(path.parent, path.name, tokenizer, template)]
    for q in info.get("quantized", []):
        info["modelfiles"].append(write_modelfile(path.parent, q["file"], tokenizer, template, f"Modelfile.{q['type']}"))
    info["held_out"] = held_out
    # The verdict's part: a quantized copy that breaks the model (its problems are in the report and the log).
    info["broken_types"] = [q["type"] for q in info.get("quantized", []) if not q["passed"]]
    return info


def adapter_gguf(job, work: Path, config, model_gguf: Path) -> dict:
    """The adapter alone for llama.cpp's --lora, checked by rebuilding its updates from the file."""
    from kielo.merge.gguf_adapter import verify_gguf_adapter, write_gguf_adapter

    kind = "f32" if job.gguf_type == "f32" else "f16"  # llama.cpp's LoRA loader takes float types
    path = work / f"{job.output.name}-adapter-{kind}.gguf"
    info = write_gguf_adapter(job.adapter, config, path, kind)
    if "skipped" in info:
        log.warning("no GGUF of the adapter alone: %s", info["skipped"])
        return info
    info.update(verify_gguf_adapter(path, job.adapter, config, model_gguf))
    if not info["passed"]:
        raise KieloError(f"the adapter GGUF check failed: {json.dumps(info)}", "re-run with --debug and report it")
    return info
