"""`kielo bench`: the command-line face of :mod:`kielo.bench.qlora` (imported only when the command runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kielo.bench.shapes import SHAPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options (``kielo bench`` and ``python -m kielo.bench.qlora`` share them)."""
    p.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    p.add_argument(
        "--plan",
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
    p.add_argument("--max-length", type=int, default=2048, help="data b: longest example and packed row width")
    p.add_argument("--examples-per-step", type=int, default=32, help="data b: examples per optimizer step")
    p.add_argument("--warmup-a", type=int, default=3)
    p.add_argument("--timed-a", type=int, default=6)
    p.add_argument(
        "--warmup-b",
        type=int,
        default=8,
        help="data b: untimed steps; its first steps bring new shapes (kernel selection), see bench/NOTES.md",
    )
    p.add_argument("--timed-b", type=int, default=4)
    p.add_argument("--worker-timeout", type=int, default=420, help="seconds for one variant's process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cases", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--grads-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--make", action="store_true", help=argparse.SUPPRESS)


def setup_parser(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


def run_command(args: argparse.Namespace, config) -> int:
    """Run the bench; the kielo config is not used (the bench fixes its own settings, as the stock scripts do)."""
    from kielo.bench.qlora import run

    return run(args)
