"""How the bench's driver starts a variant's worker (one process, or each rank of a multi-GPU run) and reads
back what it did not finish."""

from __future__ import annotations

from pathlib import Path

from kielo.bench.cases import CaseEntry, Registry

# The arguments that size the data: passed on to every worker and recorded in results.json's meta.
DATA_ARGS = (
    "batch",
    "seq",
    "max_length",
    "examples_per_step",
    "pairs_per_step",
    "pair_tokens",
    "warmup_a",
    "timed_a",
    "warmup_b",
    "timed_b",
    "warmup_p",
    "timed_p",
    "peak_tflops",
)


def worker_command(entry: CaseEntry, args, registry: Registry, model_dir: Path, grads_dir: Path, result_file: Path) -> list[str]:
    """The command that runs one variant's cases in a worker process (or, with ``--ranks``, in each rank)."""
    return [
        *registry.worker,
        "--worker",
        entry.name,
        "--worker_cases",
        entry.case_text,
        "--model_dir",
        str(model_dir),
        "--grads_dir",
        str(grads_dir),
        "--result",
        str(result_file),
        *(f"--{k}={getattr(args, k)}" for k in DATA_ARGS),
    ]


def failed_rows(entry: CaseEntry, done: list[dict], failed: str | bool, **fields) -> list[dict]:
    """The results a worker wrote, and an error row (with ``fields``) for each case it did not finish."""
    if failed:
        done = done + [{"variant": entry.name, "case": c.name, **fields, "error": failed} for c in entry.cases[len(done) :]]
    return done
