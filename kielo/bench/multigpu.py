"""`kielo bench --nproc N`: the multi-GPU bench, each variant's ranks started as ``kielo train --nproc`` starts
its processes (:func:`kielo.train.launch.launch_processes`), each rank one GPU (:mod:`kielo.bench.dist_worker`).

- Data-parallel scaling (``kielo`` and the other kielo variants without ``distributed``): the case in 1 process
  and in N, each rank computing the micro-batches the single process computes (data a: ``--batch`` rows of
  ``--seq`` tokens per rank and step), through the training loop's DDP step. Reported: tokens/s of all ranks
  together, each GPU's peak memory, and the scaling factor (N-process tokens/s over 1-process tokens/s),
  given only where the N-process run's ranks each processed the single process's tokens per step.
- FSDP2-QLoRA (``kielo+fsdp`` against ``stock+fsdp``, :mod:`kielo.bench.stock_fsdp`): both in N processes on
  the same data, peak memory per GPU and tokens/s of each.

Only data a runs here: kielo packs data b's examples into a number of rows that varies from step to step, and a
step's micro-batches must split evenly over the ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

from kielo.bench.cases import CaseEntry
from kielo.bench.report import Column
from kielo.errors import KieloError


def check_entries(entries: list[CaseEntry], nproc: int) -> None:
    """What --cases may hold with --nproc (checked before anything runs)."""
    for e in entries:
        v = e.variant
        if not (v.stack == "kielo" or (v.stack == "stock" and v.distributed == "fsdp")):
            raise KieloError(
                f"--nproc {nproc} times kielo's data-parallel and FSDP paths and the stock FSDP recipe, not {e.name}",
                "give kielo (scaling), kielo+fsdp and stock+fsdp",
            )
        for c in e.cases:
            if c.data != "a" or c.profile or c.compile or c.memtrace or c.extra:
                raise KieloError(
                    f"case {c.name!r}: the multi-GPU bench runs data a with the gc and mbs options only",
                    "write a, a/mbs=N or a/nogc",
                )
            if v.distributed == "fsdp" and c.gc != -1:
                raise KieloError(f"case {c.name!r}: the FSDP cases checkpoint every layer", "give the fsdp variants plain a")


def process_counts(entry: CaseEntry, nproc: int) -> list[int]:
    """The runs of an entry: data-parallel ones in 1 process (the baseline) and in ``nproc``; FSDP in ``nproc``."""
    return [nproc] if entry.variant.distributed == "fsdp" else [1, nproc]


def comparison_problem(one: dict, many: dict) -> str | None:
    """Why ``many`` (N processes) cannot be compared with ``one`` (1 process) as the same per-rank work, or None:
    every rank of ``many`` must have processed ``one``'s tokens per step, and ``many`` N times them in all."""
    n, want = many["processes"], one["real_tokens_per_step"]
    ranks = many["rank_tokens_per_step"]
    if len(ranks) != n or any(t != want for t in ranks):
        return f"ranks processed {ranks} tokens per step, the 1-process run {want}"
    if many["real_tokens_per_step"] != n * want:
        return f"{many['real_tokens_per_step']} tokens per step in all, not {n} x {want}"
    return None


def add_scaling(results: list[dict]) -> None:
    """Each N-process data-parallel result gets ``scaling`` (its tokens/s over the same case's 1-process
    tokens/s) or, where the two did not do the same per-rank work, ``scaling_error``."""
    single = {(r["variant"], r["case"]): r for r in results if r.get("processes") == 1 and "tok_s" in r}
    for r in results:
        if r.get("distributed") != "ddp" or "tok_s" not in r or (r["variant"], r["case"]) not in single:
            continue
        one = single[(r["variant"], r["case"])]
        problem = comparison_problem(one, r)
        if problem:
            r["scaling_error"] = problem
        else:
            r["scaling"] = round(r["tok_s"] / one["tok_s"], 3)


def _vs_stock(r: dict, stock: dict) -> str:
    base = stock.get((r["case"], r["processes"]))
    return f"{r['tok_s'] / base:.2f}x" if base and r.get("distributed") == "fsdp" else "-"


def _peaks(r: dict) -> str:
    return "/".join(f"{p:.1f}" for p in r["peak_gib_ranks"]) if r.get("peak_gib_ranks") else "-"


def columns(stock: dict) -> list[Column]:
    """The table's columns; ``stock``: stock+fsdp's tokens/s by (case, processes)."""
    return [
        Column("variant", 12, lambda r, s: r["variant"], left=True),
        Column("case", 8, lambda r, s: r["case"], left=True),
        Column("procs", 5, lambda r, s: str(r["processes"])),
        Column("mode", 5, lambda r, s: r["distributed"]),
        Column("tok/s", 8, lambda r, s: str(r["tok_s"])),
        Column("scaling", 7, lambda r, s: f"{r['scaling']:.2f}x" if "scaling" in r else ("n/c" if "scaling_error" in r else "-")),
        Column("vs stock", 8, lambda r, s: _vs_stock(r, stock)),
        Column("peak GiB/GPU", 23, lambda r, s: _peaks(r)),
        Column("tok/step", 8, lambda r, s: str(r["real_tokens_per_step"])),
        Column("first s", 7, lambda r, s: f"{r['first_step_s']:.2f}"),
        Column("step s", 7, lambda r, s: f"{r['median_step_s']:.3f}"),
    ]


def table(results: list[dict]) -> str:
    """The multi-GPU results as a table ("n/c": not comparable, see the row's scaling_error in results.json)."""
    from kielo.bench.report import table as render

    stock = {(r["case"], r["processes"]): r["tok_s"] for r in results if r.get("variant") == "stock+fsdp" and "tok_s" in r}
    return render(results, columns(stock))


def run_entries(entries: list[CaseEntry], args, registry, model_dir: Path, grads_dir: Path, work: Path, write) -> list[dict]:
    """Every entry's runs (:func:`process_counts`), each in its own launch of ranks; ``write(results)`` after each."""
    from kielo.bench.worker_command import failed_rows, worker_command
    from kielo.train.launch import launch_processes

    results: list[dict] = []
    for entry in entries:
        for n in process_counts(entry, args.nproc):
            result_file = work / f"result-{args.shape}-{entry.name}-x{n}.json"
            if entry.reuse:
                if result_file.is_file():
                    results += [{**r, "reused": True} for r in json.loads(result_file.read_text())]
                continue
            result_file.unlink(missing_ok=True)
            cmd = [*worker_command(entry, args, registry, model_dir, grads_dir, result_file), "--ranks", str(n)]
            code = launch_processes(cmd, n, timeout=args.worker_timeout, label="bench")
            failed = code != 0 and (f"timed out after {args.worker_timeout}s" if code == 124 else f"exit code {code}")
            done = json.loads(result_file.read_text()) if result_file.is_file() else []
            results += failed_rows(entry, done, failed, processes=n)
            add_scaling(results)
            write(results)
    return results
