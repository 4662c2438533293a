"""`kielo merge`: the command-line face of :func:`kielo.merge.run.merge` (options, printing, exit codes).

    kielo merge ADAPTER_OR_RUN_DIR --output_dir DIR [--dtype auto|fp16|fp32|bf16] [--requantize] [--gguf [TYPE,...]]

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
    p.add_argument(
        "--gguf",
        nargs="?",
        const=o.DEFAULT_GGUF_TYPE,
        metavar="TYPE[,TYPE...]",
        help="also write GGUF files for llama.cpp and Ollama, each with a Modelfile: the first file in "
        f"{'|'.join(o.GGUF_TYPES)} (default auto: the merged dtype, lossless), plus copies quantized with llama.cpp's "
        f"llama-quantize ({', '.join(o.GGUF_QUANTS)}), each measured against the lossless file in llama.cpp; "
        "e.g. --gguf q4_k_m,q8_0",
    )


def parse_gguf(value: str | None) -> tuple[bool, str, tuple[str, ...]]:
    """``--gguf`` as (export?, the first file's type, the quantized copies)."""
    from kielo.errors import KieloError
    from kielo.merge import options as o

    if value is None:
        return False, o.DEFAULT_GGUF_TYPE, ()
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    base = [v for v in items if v in o.GGUF_TYPES and v not in o.GGUF_QUANTS]
    quants = tuple(v for v in items if v in o.GGUF_QUANTS)
    unknown = [v for v in items if v not in o.GGUF_TYPES and v not in o.GGUF_QUANTS]
    if unknown or len(base) > 1:
        raise KieloError(
            f"--gguf {value}: {'unknown type ' + ', '.join(unknown) if unknown else 'more than one unquantized type'}",
            f"name at most one of {', '.join(o.GGUF_TYPES[:4])} and any of {', '.join(o.GGUF_QUANTS)}, e.g. --gguf f16,q4_k_m",
        )
    return True, base[0] if base else o.DEFAULT_GGUF_TYPE, quants


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
    gguf, gguf_type, gguf_quants = parse_gguf(args.gguf)
    output = config.output_dir or f"{str(Path(args.adapter)).rstrip('/')}-merged"
    report = merge(
        config,
        args.adapter,
        output,
        dtype=args.dtype,
        model=model,
        tolerance=args.tolerance,
        requantize=args.requantize,
        gguf=gguf,
        gguf_type=gguf_type,
        gguf_quants=gguf_quants,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
    )
    _print_summary(report)
    return 0 if report["passed"] else MERGE_FAILED
