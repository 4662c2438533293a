"""`kielo analyze-data DATA_FILE...`: the command-line face of :func:`kielo.analyze.analyze_data`."""

from __future__ import annotations

import argparse
import os
import sys

from kielo.config.schema import Config


def setup_parser(p: argparse.ArgumentParser) -> None:
    """The command's own options (config keys such as --model and --data.max_length come from the schema)."""
    p.add_argument(
        "data_files",
        nargs="+",
        metavar="DATA_FILE",
        help="data files (JSONL, JSON, CSV, Parquet), each analysed as a split named by its file name",
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="another tokenizer to compare on Finnish text (repeatable): a tokenizer folder, model folder, .gguf file or model name",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=3,
        metavar="N",
        help="examples of each split shown token by token, trained span highlighted (default 3)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=1000,
        metavar="N",
        help="examples per split whose languages are checked, and whose Finnish text measures the tokenizers (default 1000; 0 = all)",
    )
    p.add_argument("--workers", type=int, default=0, metavar="N", help="processes to use (default: all available cores)")


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Analyse, print the summary and the rendered examples, and point to the report."""
    from kielo.analyze.render import LEGEND, to_ansi
    from kielo.analyze.report import summary
    from kielo.analyze.run import analyze_data

    result = analyze_data(
        args.data_files,
        config,
        tokenizers=args.tokenizer,
        output_dir=config.output_dir,
        examples=max(args.examples, 0),
        sample=max(args.sample, 0),
        workers=args.workers or None,
    )
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if result["examples"]:
        print(f"Examples as the model sees them ({LEGEND if color else 'trained span in ⟦ ⟧, ✂ = cut by data.max_length'})\n")
        for rendered in result["examples"]:
            print(to_ansi(rendered, color=color))
    print(summary(result), end="")
    return 0
