"""`kielo merge`: the command-line face of :func:`kielo.merge.run.merge` (options, printing, exit codes).

    kielo merge ADAPTER_OR_RUN_DIR --output_dir DIR [--dtype auto|fp16|fp32|bf16] [--requantize] [--gguf]

The base comes from the run's saved config unless ``--model`` names another; ``--output_dir`` defaults to
``ADAPTER_OR_RUN_DIR-merged``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kielo.config.schema import Config, ModelConfig

log = logging.getLogger(__name__)

# A merge written but failing its verdict (storing it lost too much of the update): a failed check, like a
# failed prompt suite; 2 stays for mistakes and merges that could not be done.
MERGE_FAILED = 1


def setup_parser(p: argparse.ArgumentParser) -> None:
    """The command's own options (config keys such as --model and --output_dir come from the schema)."""
    from kielo.merge import options as o
    from kielo.merge.options import MAX_UPDATE_ERROR

    p.add_argument(
        "adapter",
        metavar="ADAPTER_OR_RUN_DIR",
        help="a kielo run folder, one of its checkpoints, or a PEFT adapter folder (then name the base with --model)",
    )
    p.add_argument(
        "--dtype",
        default=o.DEFAULT_DTYPE,
        choices=o.DTYPE_CHOICES,
        help=f"dtype of the merged weights (default {o.DEFAULT_DTYPE}: fp16 when every weight and sample activation is "
        "below half of fp16's range and fp16 keeps the adapter's update, else fp32). Any dtype that changes the "
        f"update by more than {100 * MAX_UPDATE_ERROR:g}%% of its norm fails the merge's verdict (exit {MERGE_FAILED})",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        help="largest allowed logit difference between the merged model and "
        f"base + adapter (default by dtype: {', '.join(f'{k} {v:g}' for k, v in o.TOLERANCES.items())})",
    )
    p.add_argument(
        "--samples", type=int, default=o.DEFAULT_SAMPLES, help=f"sample prompts the merge is checked on (default {o.DEFAULT_SAMPLES})"
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=o.DEFAULT_MAX_NEW_TOKENS,
        help=f"greedy answer length compared per prompt (default {o.DEFAULT_MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--requantize", action="store_true", help="also write an NF4 copy (OUTPUT/nf4) and report the held-out loss before and after"
    )
    p.add_argument("--gguf", action="store_true", help="also write a GGUF file for llama.cpp, checked by reading it back")
    p.add_argument(
        "--gguf_type",
        default=o.DEFAULT_GGUF_TYPE,
        choices=o.GGUF_TYPES,
        help="GGUF tensor type (default auto: the merged dtype, lossless)",
    )


def _print_summary(report: dict) -> None:
    from kielo.merge.summary import merge_summary
    from kielo.report import text

    print(text.render(merge_summary(report), title=False), end="")


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Run `kielo merge`; returns the exit status: 0, or MERGE_FAILED when the verdict failed (errors raise KieloError)."""
    from kielo.merge.run import merge

    logging.getLogger("gguf").setLevel(logging.WARNING)  # gguf-py announces every file it writes at INFO
    if not args.debug:
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader draws its own progress bar
    # --model overrides the run's base; left at its default, the run's saved base is used.
    model = config.model.name if config.model.name != ModelConfig().name else None
    output = config.output_dir or f"{str(Path(args.adapter)).rstrip('/')}-merged"
    report = merge(
        config,
        args.adapter,
        output,
        dtype=args.dtype,
        model=model,
        tolerance=args.tolerance,
        requantize=args.requantize,
        gguf=args.gguf,
        gguf_type=args.gguf_type,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
    )
    _print_summary(report)
    return 0 if report["passed"] else MERGE_FAILED
