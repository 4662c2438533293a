"""`kielo bench`: QLoRA training speed and parity, the stock stack against kielo's training path, in one
invocation on one GPU.

Builds a random-weight model in a real shape (``kielo.bench.shapes``) and times optimizer steps of NF4 +
double-quant QLoRA (bf16 compute, LoRA r=16 alpha=32 on every linear projection, AdamW lr 1e-4) on the same
data for each variant in --cases (``kielo.bench.cases.VARIANTS``): ``stock`` (transformers + peft +
bitsandbytes as the anchor scripts run it), ``kielo`` (``kielo train``'s defaults), ``kielo+fp32``,
``kielo+compute``, ``kielo+tf32``, ``+peftlora`` / ``+unfused`` (the LoRA forward), ``ref`` (fp32 arithmetic:
the yardstick of ``cos vs ref``), and Unsloth when installed, fed as its SFT trainer feeds it: ``unsloth``
(TRL's padding-free rows, its default), ``unsloth+packed`` (``packing=True``), ``unsloth+padded`` (padded as
stock), ``+nogc`` without its offloaded checkpointing (``kielo.bench.trl_layout``).

Data: ``a`` = batch x seq random tokens per step, every position trained; ``b`` = variable-length
instruction-like examples (mean ~300 tokens, tail to max_length, prompt masked), the same examples in every
optimizer step for every path: stock pads micro-batches of 2 to their longest example, kielo packs them into
rows of max_length; ``p`` = preference pairs (prompt, chosen and rejected answers of ~300 tokens each,
--pairs_per_step per step), one DPO step: stock = TRL's DPOTrainer computation on the stock model, kielo = the
objective ``kielo train`` runs (``kielo.bench.dpo``), both with the reference = the adapter switched off.
tokens/s counts real (non-padding) tokens only; MFU is the step's model FLOPs per second over the bf16 rate one
large GEMM reaches on the card in the same run (``kielo.bench.flops``). Case options: ``kielo.bench.cases``.

    kielo bench --shape llama8b --cases "stock:a,b kielo:a,b kielo+compute:a,b,a/nogc"
    kielo bench --shape tiny --seq 256 --max_length 256 --cases "stock:a,b kielo:a,b"  # CPU smoke test
    kielo bench --shape llama8b --cases "stock:p kielo:p"  # DPO (stock needs TRL)
    kielo bench --nproc 2 --cases "kielo:a"  # data-parallel scaling, 1 -> 2 GPUs (kielo.bench.multigpu)
    kielo bench --nproc 2 --shape llama70b --cases "kielo+fsdp:a stock+fsdp:a"  # FSDP2-QLoRA, kielo vs stock
    bash bench/run_qlora_bench.sh ARGS  # on a GPU machine: installs the carried wheels, then kielo bench ARGS
    python bench/research_variants.py ARGS  # the same bench with the research variants and case options

Results: a table on stdout and ``results.json`` in --out (default $OUT, else runs/qlora-bench).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kielo.bench.shapes import SHAPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options (``kielo bench`` and the research scripts share them)."""
    p.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    p.add_argument(
        "--cases",
        default="stock:a,b kielo:a,b",
        help="space-separated VARIANT:CASE,CASE,...; =VARIANT reuses that variant's results from an earlier "
        "invocation in the same workdir (same machine) instead of running it",
    )
    p.add_argument("--workdir", default=str(Path("build") / "qlora-bench"), help="model folder and gradient dumps")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(Path("runs") / "qlora-bench"),
        help="where results.json goes (default $OUT, else runs/qlora-bench)",
    )
    p.add_argument("--batch", type=int, default=2, help="data a: rows per optimizer step")
    p.add_argument("--seq", type=int, default=2048, help="data a: tokens per row")
    p.add_argument("--max_length", type=int, default=2048, help="data b: longest example and packed row width")
    p.add_argument("--examples_per_step", type=int, default=32, help="data b: examples per optimizer step")
    p.add_argument("--pairs_per_step", type=int, default=8, help="data p: preference pairs per optimizer step")
    p.add_argument("--pair_tokens", type=int, default=300, help="data p: mean tokens of a prompt and of each answer")
    p.add_argument("--warmup_a", type=int, default=3)
    p.add_argument("--timed_a", type=int, default=6)
    p.add_argument(
        "--warmup_b",
        type=int,
        default=8,
        help="data b: untimed steps; its first steps bring new shapes (kernel selection), see bench/NOTES.md",
    )
    p.add_argument("--timed_b", type=int, default=4)
    p.add_argument("--warmup_p", type=int, default=3)
    p.add_argument("--timed_p", type=int, default=4)
    p.add_argument("--worker_timeout", type=int, default=420, help="seconds for one variant's process")
    p.add_argument(
        "--peak_tflops", type=float, help="the card's bf16 rate for MFU (default: measured with one large GEMM in this run)"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="the multi-GPU bench (kielo.bench.multigpu): kielo's data-parallel scaling from 1 to N processes, and the "
        "fsdp variants in N; one GPU per process",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--measure_peak", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker_cases", help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--grads_dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--make", action="store_true", help=argparse.SUPPRESS)


def setup_parser(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def run_command(args: argparse.Namespace, config) -> int:
    """Run the bench; the kielo config is not used (the bench fixes its own settings, as the stock scripts do)."""
    from kielo.bench.runner import run

    return run(args)


def main(argv: list[str] | None = None, registry=None) -> int:
    """The bench outside the kielo CLI (the research scripts in the repository's bench/): the same options, the
    given registry (default: the product's variants); a user mistake prints its message and fix and returns 2."""
    import sys

    from kielo.bench.cases import PRODUCT
    from kielo.bench.runner import run
    from kielo.errors import KieloError
    from kielo.flags import underscore_options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    try:
        return run(p.parse_args(underscore_options(sys.argv[1:] if argv is None else list(argv))), registry or PRODUCT)
    except KieloError as e:
        print(f"bench: error: {e.message}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
