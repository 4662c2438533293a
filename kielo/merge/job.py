"""A merge job: the adapter, its base, the output and every setting, resolved and checked before any weights
are read (step 1 of ``kielo.merge.run``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from kielo.config.load import from_dict
from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.merge import options as o
from kielo.model.source import ModelSource, resolve_adapter, resolve_model
from kielo.output import check_output_dir

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 192  # longer sample prompts keep their last tokens (the part that leads into the answer)


@dataclass
class MergeJob:
    """Everything resolved and checked before any weights are read."""

    config: Config  # the run's config, with the base, device and output of this merge
    source: ModelSource  # the base
    adapter: str
    output: Path
    dtype_name: str  # as asked: "auto" until stored_as() decides
    dtype: torch.dtype  # of the saved weights (with "auto": fp32, the base's full precision, until decided)
    compute: torch.dtype  # of the models while checking (see dequantize.compute_dtype_for)
    device: torch.device
    tolerance: float  # with "auto", fp16's until decided
    gguf_type: str | None  # None: no GGUF export; "auto" until the stored dtype is decided
    requantize: bool
    samples: int
    max_new_tokens: int
    run_quantization: dict | None  # how training stored the base (for the informational comparison)
    tolerance_given: bool = False
    gguf_quants: tuple[str, ...] = ()  # copies made with llama-quantize from the first GGUF file
    llama_cpp: object = None  # the llama.cpp build (kielo.merge.llama_cpp.LlamaCpp) checking and quantizing GGUFs

    @property
    def auto(self) -> bool:
        """Whether the stored dtype is still to be chosen (see :mod:`kielo.merge.storage`)."""
        return self.dtype_name == o.AUTO_DTYPE

    def stored_as(self, name: str) -> MergeJob:
        """This job with the stored dtype decided; the compute dtype stays (fp32 holds every stored value exactly)."""
        from kielo.merge.dequantize import DTYPES
        from kielo.merge.gguf_export import resolve_gguf_type
        from kielo.merge.verify import tolerance_for

        dtype = DTYPES[name]
        return dataclasses.replace(
            self,
            dtype_name=name,
            dtype=dtype,
            tolerance=self.tolerance if self.tolerance_given else tolerance_for(dtype),
            gguf_type=None if self.gguf_type is None else resolve_gguf_type(self.gguf_type, dtype),
        )


def adapter_base(adapter: str, run_cfg: dict | None, model: str | None) -> str:
    if model:
        return model
    if run_cfg and run_cfg.get("model", {}).get("name"):
        return run_cfg["model"]["name"]
    recorded = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if recorded:
        return recorded
    raise KieloError(f"{adapter} does not say which base model it belongs to", "pass the base with --model")


def check_output(out: Path, adapter: str) -> None:
    check_output_dir(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KieloError(f"{out} already exists and is not empty", "choose another --output_dir or remove that one")
    if out.resolve() == Path(adapter).resolve() or Path(adapter).resolve() in out.resolve().parents:
        raise KieloError(f"--output_dir {out} is inside the adapter folder", "write the merged model somewhere else")


def _gguf_plan(gguf_type: str, quants: tuple[str, ...]):
    """The first file's type, the llama-quantize copies and the llama.cpp build that makes and checks them."""
    from kielo.merge.llama_cpp import absent_note, find_llama_cpp

    bad = [q for q in quants if q not in o.GGUF_QUANTS]
    if bad:
        raise KieloError(f"--gguf {','.join(bad)} is not a quantization kielo makes", f"use {', '.join(o.GGUF_QUANTS)}")
    llama_cpp = find_llama_cpp()
    if llama_cpp is None:
        if quants == ("q8_0",) and gguf_type == o.DEFAULT_GGUF_TYPE:
            return "q8_0", (), None  # kielo's own Q8_0 writer, checked with transformers' reader
        if quants:
            raise KieloError(f"--gguf {','.join(quants)} needs llama.cpp's llama-quantize: {absent_note()}", "run `make llama-cpp`")
    elif gguf_type == "q8_0":
        gguf_type, quants = (
            o.DEFAULT_GGUF_TYPE,
            tuple(dict.fromkeys(("q8_0", *quants))),
        )  # llama-quantize's Q8_0 from the lossless file
    return gguf_type, quants, llama_cpp


def prepare_merge(
    config: Config,
    adapter_dir: str,
    output_dir: str | Path,
    dtype: str = o.DEFAULT_DTYPE,
    model: str | None = None,
    tolerance: float | None = None,
    requantize: bool = False,
    gguf: bool = False,
    gguf_type: str = o.DEFAULT_GGUF_TYPE,
    gguf_quants: tuple[str, ...] = (),
    samples: int = o.DEFAULT_SAMPLES,
    max_new_tokens: int = o.DEFAULT_MAX_NEW_TOKENS,
) -> MergeJob:
    """Resolve and check a merge without loading weights: clear errors come first and cost nothing."""
    from transformers import AutoConfig

    from kielo.evaluate.loading import check_adapter_base
    from kielo.merge.dequantize import check_unquantized, compute_dtype_for, resolve_dtype
    from kielo.merge.gguf_export import bytes_per_weight, check_exportable, resolve_gguf_type
    from kielo.merge.resources import check_disk, check_memory, logits_bytes, output_bytes
    from kielo.merge.verify import tolerance_for
    from kielo.model.device import pick_device

    if dtype not in o.DTYPE_CHOICES:
        raise KieloError(f"--dtype {dtype!r} is not supported", f"use one of: {', '.join(o.DTYPE_CHOICES)}")
    auto = dtype == o.AUTO_DTYPE
    # auto merges at the base's full precision (exact for any stored base) and picks the stored dtype after
    # measuring; until then memory and disk are planned for fp32, the largest it can pick.
    torch_dtype = torch.float32 if auto else resolve_dtype(dtype)
    if samples < 1 or max_new_tokens < 1:
        raise KieloError("--samples and --max_new_tokens must be at least 1", "e.g. --samples 4 --max_new_tokens 32")
    adapter, run_cfg = resolve_adapter(adapter_dir)
    out = Path(output_dir)
    check_output(out, adapter)
    base_name = adapter_base(adapter, run_cfg, model)
    cfg = from_dict(run_cfg) if run_cfg else config
    run_quant = dataclasses.asdict(cfg.quantization) if run_cfg else None
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, name=base_name, trust_remote_code=config.model.trust_remote_code or cfg.model.trust_remote_code
        ),
        training=dataclasses.replace(cfg.training, device=config.training.device),
        output_dir=str(out),
    )
    source = resolve_model(base_name)
    try:
        check_adapter_base(adapter, source)
    except KieloError as e:
        raise KieloError(
            e.message, "leave out --model to merge into the base the run was trained on, or pass that base with --model"
        ) from None
    check_unquantized(source)
    try:
        model_config = AutoConfig.from_pretrained(source.path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise KieloError(
            f"cannot read the model config of {source.path}: {str(e).splitlines()[0]}", "check --model (or the run's model.name)"
        ) from None
    resolved_gguf, llama_cpp = None, None
    if gguf:
        gguf_type, gguf_quants, llama_cpp = _gguf_plan(gguf_type, tuple(gguf_quants))
        resolved_gguf = gguf_type if auto and gguf_type == o.AUTO_DTYPE else resolve_gguf_type(gguf_type, torch_dtype)
        check_exportable(model_config)
    device = pick_device(cfg.training.device)
    compute = compute_dtype_for(torch_dtype, device)
    # Reference logits, plus the merged model's when they are kept for the GGUF comparison.
    working = logits_bytes(
        samples * (2 if gguf else 1), MAX_PROMPT_TOKENS + max_new_tokens, model_config.get_text_config().vocab_size, torch.float32
    )
    try:
        check_memory(model_config, compute, device, source.path, working)
    except KieloError as e:
        if auto:
            raise KieloError(
                e.message, f"{e.fix}; or --dtype fp16 to merge in 16 bits (the report still measures the update kept)"
            ) from None
        if compute == torch_dtype:
            raise
        log.info("an fp32 copy of the model doesn't fit in memory: checking in %s instead (slower on most CPUs)", dtype)
        compute = torch_dtype
        check_memory(model_config, compute, device, source.path, working)
    tokenizer_bytes = sum(p.stat().st_size for p in Path(source.path).glob("tokenizer*")) if source.is_local else 0
    check_disk(
        out.parent,
        output_bytes(
            model_config,
            torch_dtype,
            None if resolved_gguf is None else bytes_per_weight("f32" if resolved_gguf == o.AUTO_DTYPE else resolved_gguf),
            requantize,
            tokenizer_bytes,
        ),
    )
    return MergeJob(
        cfg,
        source,
        adapter,
        out,
        dtype,
        torch_dtype,
        compute,
        device,
        tolerance_for(torch.float16 if auto else torch_dtype) if tolerance is None else tolerance,
        resolved_gguf,
        requantize,
        samples,
        max_new_tokens,
        run_quant,
        tolerance is not None,
        gguf_quants if gguf else (),
        llama_cpp,
    )
