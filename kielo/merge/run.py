"""`kielo merge`: fold a trained adapter into its unquantized base, prove the result, optionally re-quantize
it and export GGUF. Everything is written to a temporary folder beside the output and renamed into place
only when every check passed, so a failed or interrupted merge leaves nothing behind.

Order of work (one model in memory at a time):

1. job: resolve adapter and base, check they belong together, check memory and disk, all before any
   weights are read;
2. reference: the unquantized base + adapter (unmerged) answers the sample prompts greedily; its logits
   are kept;
3. merge, choose the stored dtype (``auto``) and judge what storing costs the update
   (:mod:`kielo.merge.storage`), save the HF folder;
4. informational: the 4-bit base + adapter that training used, compared with the reference (that
   difference is quantization error, not merge error);
5. reload the saved folder with plain ``from_pretrained`` and compare it with the reference: must pass;
6. optional NF4 copy with held-out loss before/after; optional GGUF export, read back and compared.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch

from kielo.config.schema import Config, GenerationConfig
from kielo.errors import KieloError
from kielo.merge.job import MAX_PROMPT_TOKENS, MergeJob, prepare_merge
from kielo.merge.summary import merge_summary
from kielo.report.data import render as render_json
from kielo.report.data import write_json
from kielo.report.html import render as render_html

log = logging.getLogger(__name__)

REPORT_FILE = "merge_report.json"
HTML_FILE = "merge_report.html"  # the same report for people, beside the JSON
NF4_FOLDER = "nf4"
LOSS_EXAMPLES = 64  # held-out examples for the re-quantization loss and the quantized GGUFs' loss


class _Clock:
    """Seconds spent per step, for the report."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name] = round(now - self._last, 1)
        self._last = now


def _collect() -> None:
    """Return the memory of models the caller has just deleted (HF models hold reference cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _open_up(folder: Path) -> None:
    """Give the finished folder the permissions a plain mkdir and write would (mkdtemp made it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _device_map(device: torch.device) -> dict:
    return {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}


def _trained_setup(job: MergeJob, bundle, reference, examples) -> dict:
    """Informational: the quantized base + adapter that training used, compared with the reference."""
    from kielo.merge.requantize import held_out_loss
    from kielo.merge.verify import compare
    from kielo.model.adapter import load_adapter
    from kielo.model.load import load_base_model

    if job.run_quantization is None:
        return {"skipped": "how the adapter was trained is unknown (no kielo_config.yaml beside it)"}
    try:
        model = load_adapter(load_base_model(job.source, job.config, job.device, for_training=False), job.adapter)
    except (KieloError, ImportError, RuntimeError) as e:
        return {"skipped": str(e).splitlines()[0]}
    # Teacher-forced only: free generation through bitsandbytes' 4-bit CPU kernels is slow, and argmax
    # agreement on the reference answers already says how often the two would choose differently.
    result, _ = compare(model, reference, job.tolerance, job.device, generate=False)
    result.pop("passed")  # not a pass/fail check: this difference is the base's quantization error
    result["quantization"] = job.run_quantization
    if job.requantize:
        result["held_out_loss"] = held_out_loss(dataclasses.replace(bundle, model=model), examples)["loss"]
    del model
    _collect()
    return result


def _execute(job: MergeJob, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from kielo.infer.generate import generation_kwargs
    from kielo.merge.dequantize import load_base_16bit
    from kielo.merge.merge import adapter_moved, adapter_summary, merge_adapter, save_merged
    from kielo.merge.samples import held_out_examples
    from kielo.merge.storage import activation_peak
    from kielo.merge.verify import Reference, capture_reference, check, compare
    from kielo.model.adapter import load_adapter
    from kielo.model.bundle import Bundle, load_tokenizer_and_template, make_encoder

    cfg, device = job.config, job.device
    clock = _Clock()
    report: dict = {
        "adapter": adapter_summary(job.adapter),
        "base": job.source.path,
        "dtype": job.dtype_name,
        "compute_dtype": str(job.compute).removeprefix("torch."),
        "device": str(device),
    }
    if not adapter_moved(job.adapter):
        log.warning("the adapter's LoRA B matrices are all zero (untrained): the merged model equals the base")
        report["adapter"]["untrained"] = True
    tokenizer, template = load_tokenizer_and_template(cfg, job.source)
    encoder = make_encoder(tokenizer, template, cfg)
    examples, held_out = held_out_examples(cfg, max(job.samples, LOSS_EXAMPLES if job.requantize or job.gguf_quants else 0))
    prompts = [encoder.prompt_ids(ex.prompt_messages)[-MAX_PROMPT_TOKENS:] for ex in examples[: job.samples]]

    log.info("reference: %s (%s, unquantized) + adapter %s", job.source.path, str(job.dtype).removeprefix("torch."), job.adapter)
    base = load_base_16bit(job.source, job.dtype, device, cfg.model.trust_remote_code, compute=job.compute)
    peft_model = load_adapter(base, job.adapter)
    bundle = Bundle(peft_model, tokenizer, template, encoder, device, job.source, cfg, job.adapter)
    gen = generation_kwargs(bundle, GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=0.0))
    # How far the activations reach: whether fp16 can hold the model (kielo.merge.storage).
    with activation_peak(peft_model) as activations:
        reference = capture_reference(peft_model, prompts, gen, device)
    with peft_model.disable_adapter():
        effect, _ = compare(peft_model, reference, job.tolerance, device, generate=False)
    report["samples"] = {
        "source": held_out,
        "sequences": len(prompts),
        "max_new_tokens": job.max_new_tokens,
        "tokens": effect["tokens"],
    }
    report["adapter_effect"] = {k: effect[k] for k in ("max_abs_logit_diff", "mean_abs_logit_diff", "max_kl", "mean_kl")}
    clock.lap("reference")

    log.info("merging into the %s weights and saving", str(job.dtype).removeprefix("torch."))
    merged, report["weights"] = merge_adapter(peft_model, job.adapter)
    job, report["storage"] = _decide_storage(job, merged, report["weights"].pop("update_error"), activations)
    report["dtype"] = job.dtype_name
    save_merged(merged, bundle, work, job.dtype)
    bundle.model = None
    del merged, peft_model, base
    _collect()
    clock.lap("merge_and_save")

    log.info("comparing with the quantized base + adapter that training used (informational)")
    report["vs_trained"] = _trained_setup(job, bundle, reference, examples)
    clock.lap("vs_trained")

    log.info("reloading %s with plain from_pretrained and comparing with base + adapter", work.name)
    merged = AutoModelForCausalLM.from_pretrained(work, dtype=job.compute, device_map=_device_map(device)).eval()
    result, merged_logits = compare(merged, reference, job.tolerance, device, keep_logits=job.gguf_type is not None)
    report["verification"] = result
    check(
        result,
        f"the merge check ({job.dtype_name})",
        "this is a bug or a broken adapter, not something to tune away: re-run with --debug and report it; "
        "--tolerance only if you know why the numbers differ",
    )
    bundle = dataclasses.replace(bundle, model=merged)
    clock.lap("verification")
    # From here on the merged model is the reference (for the GGUF file); the base + adapter logits can go.
    reference = Reference(reference.sequences, reference.prompt_lengths, merged_logits or [], reference.generate_kwargs)
    del merged_logits

    if job.requantize:
        from kielo.merge.requantize import requantize

        log.info("re-quantizing the merged model to NF4")
        report["requantized"] = requantize(bundle, work, work / NF4_FOLDER, examples, held_out, job.dtype)
        clock.lap("requantize")

    if job.gguf_type is not None:
        from kielo.merge.gguf_stage import adapter_gguf, finish_gguf, write_first

        path, info = write_first(job, work, merged, tokenizer, template)
        config = merged.config
        bundle.model = None
        del merged
        _collect()
        report["gguf"] = finish_gguf(job, path, info, config, tokenizer, template, encoder, examples, held_out, reference)
        report["gguf"]["adapter"] = adapter_gguf(job, work, config, path)
        clock.lap("gguf")
    report["timings_s"] = clock.laps
    # The checks above raise when the merge is wrong; what is left to judge is what storing it cost the update,
    # and whether a quantized GGUF still behaves like the lossless one.
    report["passed"] = report["storage"]["passed"] and not report.get("gguf", {}).get("broken_types")
    return report


def _decide_storage(job: MergeJob, merged, update_error: dict[str, float], activations) -> tuple[MergeJob, dict]:
    """The stored dtype (chosen by the auto rule, or as asked) and the storage section of the report."""
    from kielo.merge.storage import choose, storage_report, weight_peak

    weights = weight_peak(merged)
    name, why = choose(update_error, weights, activations) if job.auto else (job.dtype_name, None)
    if job.auto:
        log.info("storing the merged weights in %s: %s", name, why)
    storage = storage_report(job.dtype_name, name, why, update_error, weights, activations)
    if not storage["passed"]:
        log.warning(
            "storing the merged weights in %s %s; the merge fails its verdict (--dtype auto avoids it)", name, storage["failure"]
        )
    return job.stored_as(name), storage


def merge(config: Config, adapter_dir: str, output_dir: str | Path, **options) -> dict:
    """Merge the adapter in ``adapter_dir`` (a kielo run folder, checkpoint or PEFT adapter) into its base.

    ``options`` are :func:`kielo.merge.job.prepare_merge`'s (dtype, model, tolerance, requantize, gguf,
    gguf_type, samples, max_new_tokens), which checks them before anything loads.

    ``model`` overrides the base (default: the run's ``model.name``); ``config`` supplies the device and
    ``model.trust_remote_code``. Writes an HF model folder to ``output_dir`` (``nf4/`` and a ``.gguf`` in it
    when asked) and returns the report, also written there as ``merge_report.json``. Raises
    :class:`~kielo.errors.KieloError` when the merge can't be done or fails its check; then nothing is written.

    ``dtype`` ``auto`` stores fp16 where that keeps the model's range and the adapter's update, else fp32
    (:mod:`kielo.merge.storage`). Whichever dtype, the report's ``passed`` is False when storing changed the
    update by more than ``storage.MAX_UPDATE_ERROR`` of its norm (the folder is written: it is what was asked).
    """
    import kielo

    started = time.time()
    job = prepare_merge(config, adapter_dir, output_dir, **options)
    out = job.output
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename stays on one filesystem and is atomic.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # A plain `kill` would end the process without cleaning up; make it an interrupt, which does.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        report = {"kielo_version": kielo.__version__, "output": str(out), **_execute(job, work)}
        report["files"] = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()) + [REPORT_FILE, HTML_FILE]
        report["wall_time_s"] = round(time.time() - started, 2)
        document = merge_summary(report)
        write_json(render_json(document), work / REPORT_FILE, indent=2)
        (work / HTML_FILE).write_text(render_html(document), encoding="utf-8")
        _open_up(work)
        if out.is_dir():
            out.rmdir()  # empty (checked in the job); rename needs the name free
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    log.info("merged model written to %s", out)
    return report
