"""What a bench run names: variants (a stack and its settings), cases (data and step options) and the registry
of both that one bench invocation knows.

A run is ``VARIANT:CASE,CASE ...``; a case is ``DATA[/opt...]`` (data ``a``, ``b`` or ``p``: ``kielo.bench.data``)
with the options ``nogc`` (no gradient checkpointing), ``gc=N`` (checkpoint the first N layers only), ``mbs=N``
(sequences per micro-batch for a, packed rows for b, pairs for p; default 2), ``profile`` (one extra untimed step
under torch.profiler), ``compile`` (torch.compile each decoder layer) and ``memtrace`` (record CUDA allocations
over the first step). Research scripts in the repository's ``bench/`` pass a :class:`Registry` with more variants
and options (``bench/research_variants.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from kielo.errors import KieloError

STACKS = ("stock", "kielo", "unsloth")
# a = full rows, b = instruction examples (SFT); p = preference pairs (DPO, kielo.bench.dpo)
DATA = ("a", "b", "p")


@dataclass(frozen=True)
class Variant:
    """One stack with its settings, loaded once per worker process.

    ``stock``: transformers + peft + bitsandbytes as the anchor scripts run it; ``kielo``: kielo's training path
    (``stream`` and ``kernels`` are training.stream_dtype and training.kernels, ``lora_forward`` one of
    ``kielo.train.step.LORA_FORWARDS``); ``unsloth``: Unsloth, when installed, loaded as its anchor script does.
    """

    stack: str
    stream: str = "fp32"
    kernels: str = "none"
    lora_forward: str = "fused"
    compute_dtype: str = "bf16"  # quantization.compute_dtype (fp32: the reference arithmetic)
    tf32: bool | None = None  # fp32 matmuls on TF32 tensor cores (None: torch's default, off)
    offload: str = "auto"  # kielo: training.checkpoint_offload (checkpointed layer inputs in pinned host memory)
    attention: str = "auto"  # kielo: training.attention (varlen or sdpa for packed rows)
    unsloth_gc: bool = True  # unsloth: its offloaded gradient checkpointing (fixed at load)
    # unsloth: how its trainer lays out batches (kielo.bench.data.LAYOUTS): padding_free is its SFT trainer's
    # default, trl_packed its packing=True, padded the layout before padding-free became the default.
    unsloth_layout: str = "padding_free"
    # Whether kielo's memory planner models this variant (its estimate is printed beside the measured peak).
    planned: bool = True
    # How the multi-GPU bench (kielo bench --nproc N) spreads it: "" = data-parallel (kielo: kielo train's DDP
    # path), "fsdp" = FSDP2 sharding (kielo: training.distributed fsdp; stock: accelerate's FSDP2 QLoRA recipe).
    distributed: str = ""
    # A research change to the loaded model, once its adapter is on: (model, TrainingPath) -> TrainingPath.
    adjust: Callable | None = None


@dataclass(frozen=True)
class StepOption:
    """What a registry's extra case option changes in a step: the loss head (kielo stack only), a context
    entered around every step (given the device), and the fields it records in the result."""

    fields: dict = field(default_factory=dict)
    loss: Callable | None = None
    context: Callable[..., AbstractContextManager] | None = None
    planned: bool = False  # whether the memory planner's estimate still applies with this option


@dataclass(frozen=True)
class Case:
    name: str
    data: str  # "a" (full rows), "b" (variable-length instruction data) or "p" (preference pairs, a DPO step)
    gc: int = -1  # layers checkpointed: -1 all, 0 none, N the first N
    mbs: int = 2
    profile: bool = False  # one extra, untimed step under torch.profiler: top CUDA kernels printed
    compile: bool = False  # torch.compile each decoder layer (stays compiled for the worker's later cases)
    memtrace: bool = False  # record CUDA allocations over the first step; snapshot written next to the results
    extra: tuple[StepOption, ...] = ()  # the registry's extra options, in the order given

    def fields(self) -> dict:
        """The case's settings as recorded in results.json."""
        out = {"data": self.data, "gc": self.gc, "mbs": self.mbs, "profile": self.profile, "compile": self.compile}
        out["memtrace"] = self.memtrace
        for option in self.extra:
            out.update(option.fields)
        return out

    @property
    def planned(self) -> bool:
        # The planner models an SFT step; a DPO step has a reference forward and twice the rows.
        return self.data != "p" and self.gc <= 0 and not self.profile and all(o.planned for o in self.extra)


def _int(text: str, value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise KieloError(f"case {text!r}: {key}= needs a whole number, not {value!r}", f"write e.g. a/{key}=4") from None


def parse_case(text: str, options: dict[str, Callable[[str], StepOption]] | None = None) -> Case:
    """A case from its text, ``DATA[/opt...]``; ``options`` maps further option keys to their parsers (a parser
    gets the text after ``=``, "" if none, and raises KieloError on a value it does not take)."""
    options = options or {}
    data, *opts = text.split("/")
    if data not in DATA:
        raise KieloError(f"case {text!r}: data must be a, b or p", "write a case as a, b or p, with options after /: a/nogc")
    settings: dict = {}
    extra = []
    for opt in opts:
        key, _, value = opt.partition("=")
        if key == "nogc" and not value:
            settings["gc"] = 0
        elif key in ("gc", "mbs"):
            settings[key] = _int(text, value, key)
        elif key in ("profile", "compile", "memtrace") and not value:
            settings[key] = True
        elif key in options:
            extra.append(options[key](value))
        else:
            known = ["nogc", "gc=N", "mbs=N", "profile", "compile", "memtrace", *options]
            raise KieloError(f"case {text!r}: unknown option {opt!r}", f"options are {', '.join(known)}")
    if sum(o.loss is not None for o in extra) > 1:
        raise KieloError(f"case {text!r}: more than one option chooses the loss head", "give one head option per case")
    return Case(text, data, extra=tuple(extra), **settings)


@dataclass(frozen=True)
class Registry:
    """The variants and extra case options one bench invocation knows, and the command that runs one variant
    in a fresh process with this same registry (the bench's workers)."""

    variants: dict[str, Variant]
    options: dict[str, Callable[[str], StepOption]] = field(default_factory=dict)
    worker: tuple[str, ...] = (sys.executable, "-m", "kielo", "bench")


@dataclass(frozen=True)
class CaseEntry:
    name: str
    variant: Variant
    cases: tuple[Case, ...]
    reuse: bool  # "=NAME": the results an earlier invocation left in the workdir

    @property
    def case_text(self) -> str:
        return ",".join(c.name for c in self.cases)


def parse_cases(cases: str, registry: Registry) -> list[CaseEntry]:
    """The entries of ``--cases``, every name and case checked before anything runs."""
    entries = []
    for spec in cases.split():
        name, _, cases = spec.partition(":")
        reuse = name.startswith("=")
        name = name.lstrip("=")
        if name not in registry.variants:
            raise KieloError(f"unknown variant {name!r}", f"known: {', '.join(registry.variants)}")
        variant = registry.variants[name]
        parsed = tuple(parse_case(c, registry.options) for c in cases.split(",")) if cases else ()
        if not parsed and not reuse:
            raise KieloError(f"variant {name!r} has no cases", f"write {name}:a,b")
        for case in parsed:
            if variant.stack != "kielo" and any(o.loss for o in case.extra):
                raise KieloError(f"case {case.name!r}: {name} computes its model's own loss", "give head options to kielo variants")
            if case.data == "p" and (variant.stack == "unsloth" or any(o.loss for o in case.extra)):
                raise KieloError(
                    f"case {case.name!r}: the DPO case runs stock's and kielo's own DPO steps",
                    "give p to stock and kielo variants, no head options",
                )
            if variant.stack == "unsloth" and case.gc != -1:
                raise KieloError(
                    f"case {case.name!r}: unsloth's checkpointing is fixed at load", "use the unsloth+nogc variant, not a gc option"
                )
        if variant.stack == "unsloth" and not any(e.variant.stack == "stock" for e in entries):
            # kielo's and stock's seeded peft adapters start equal; Unsloth seeds its own, so it takes stock's.
            raise KieloError(f"{name} starts from stock's LoRA weights", f"put stock (or =stock) before {name} in --cases")
        entries.append(CaseEntry(name, variant, parsed, reuse))
    return entries


def liger_default_chunks(model, path):
    """The training path with Liger's fused head chunked Liger's way (``chunk_mem_const`` 1) instead of kielo's
    byte-bounded chunks: the A/B of that choice (kielo.train.loss.liger_chunk_mem_const)."""
    from dataclasses import replace

    from kielo.train.loss import liger_default_chunk_loss_sum

    return replace(path, loss=liger_default_chunk_loss_sum)


def bitsandbytes_dequantize(model, path):
    """The training path with bitsandbytes' dequantize in the fused 4-bit + LoRA node instead of kielo's Triton
    kernel: the A/B of that kernel (kielo.model.nf4_dequant)."""
    from kielo.model.lora_forward import set_dequantize

    set_dequantize(model, "bitsandbytes")
    return path


def keep_dequantized(model, path):
    """The training path with each dequantized 4-bit weight kept from its layer's recomputation to its backward
    (two dequantizations a step instead of three; one layer's weights more in memory): lever 18. Checkpointed
    cases only (kielo.model.lora_forward.set_keep_weight)."""
    from kielo.model.lora_forward import set_keep_weight

    set_keep_weight(model, True)
    return path


VARIANTS = {
    "stock": Variant("stock"),
    # kielo's path with every matmul in fp32 and TF32 off (same dequantized weights): the yardstick for how far
    # each path's gradients, stock's included, are from exact arithmetic ("cos vs ref").
    "ref": Variant("kielo", compute_dtype="fp32", tf32=False, planned=False),
    "kielo": Variant("kielo", stream="auto", kernels="auto"),  # kielo train's defaults
    "kielo+fp32": Variant("kielo"),  # the fp32 stream everywhere, no fused kernels (stock's arithmetic)
    "kielo+tf32": Variant("kielo", stream="auto", kernels="auto", tf32=True),
    # --training.stream_dtype compute: the bf16 stream (+ Liger when installed) on any family
    "kielo+compute": Variant("kielo", stream="compute", kernels="auto"),
    # peft's own LoRA forward, and kielo's without the fused 4-bit + LoRA node
    "kielo+peftlora": Variant("kielo", stream="auto", kernels="auto", lora_forward="peft", planned=False),
    "kielo+compute+peftlora": Variant("kielo", stream="compute", kernels="auto", lora_forward="peft", planned=False),
    "kielo+unfused": Variant("kielo", stream="auto", kernels="auto", lora_forward="unfused", planned=False),
    # training.checkpoint_offload on and off (auto, kielo's default, turns it on for models 4,096 or more wide)
    "kielo+offload": Variant("kielo", stream="auto", kernels="auto", offload="on"),
    "kielo+nooffload": Variant("kielo", stream="auto", kernels="auto", offload="off"),
    # packed rows through SDPA with a block-diagonal mask instead of varlen attention (the A/B of training.attention)
    "kielo+sdpa": Variant("kielo", stream="auto", kernels="auto", attention="sdpa"),
    "kielo+ligerchunks": Variant("kielo", stream="auto", kernels="auto", adjust=liger_default_chunks, planned=False),
    "kielo+compute+unfused": Variant("kielo", stream="compute", kernels="auto", lora_forward="unfused", planned=False),
    "kielo+keepw": Variant("kielo", stream="auto", kernels="auto", adjust=keep_dequantized, planned=False),
    "kielo+bnbdequant": Variant("kielo", stream="auto", kernels="auto", adjust=bitsandbytes_dequantize, planned=False),
    # FSDP2-QLoRA over --nproc processes (kielo.bench.multigpu): kielo's training.distributed fsdp, and the stock
    # recipe (bnb_4bit_quant_storage bf16, accelerate's FSDP2 plugin, activation checkpointing).
    "kielo+fsdp": Variant("kielo", stream="auto", kernels="auto", distributed="fsdp", planned=False),
    "stock+fsdp": Variant("stock", distributed="fsdp", planned=False),
    # Unsloth as its SFT trainer feeds it by default (padding-free), with packing=True, and padded as stock.
    "unsloth": Variant("unsloth"),
    "unsloth+packed": Variant("unsloth", unsloth_layout="trl_packed"),
    "unsloth+padded": Variant("unsloth", unsloth_layout="padded"),
    "unsloth+nogc": Variant("unsloth", unsloth_gc=False),
    "unsloth+packed+nogc": Variant("unsloth", unsloth_gc=False, unsloth_layout="trl_packed"),
}

PRODUCT = Registry(VARIANTS)
