"""The bench's driver: build the random model once, run every variant in --cases in its own process (the
registry's worker command), add the parity figures, write results.json and print the table."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from kielo.bench.cases import PRODUCT, CaseEntry, Registry, parse_cases
from kielo.bench.worker_command import DATA_ARGS, failed_rows, worker_command
from kielo.errors import KieloError


def run(args: argparse.Namespace, registry: Registry = PRODUCT) -> int:
    """``kielo bench`` (and a research script's own variants, through ``registry``): a worker or model-building
    subprocess when ``--worker`` or ``--make`` is given, else every entry of --cases."""
    if args.worker and args.ranks:
        from kielo.bench.dist_worker import worker

        worker(args, registry)
        return 0
    if args.worker:
        from kielo.bench.worker import worker

        worker(args, registry)
        return 0
    work = Path(args.workdir)
    model_dir, grads_dir, out = work / f"model-{args.shape}", work / "grads", Path(args.out)
    if args.make:
        from kielo.bench.models import make_model

        make_model(model_dir, args.shape)
        return 0
    if args.measure_peak:
        import torch

        from kielo.bench.flops import measure_bf16_peak

        print(measure_bf16_peak(torch.device("cuda")) if torch.cuda.is_available() else 0.0)
        return 0
    entries = parse_cases(args.cases, registry)  # every name and case checked before anything runs
    if args.nproc > 1:
        from kielo.bench.multigpu import check_entries

        check_entries(entries, args.nproc)
    elif any(e.variant.distributed for e in entries):
        raise KieloError("the fsdp variants shard the model over several processes", "give --nproc 2 (or more)")
    grads_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "config.json").is_file():
        t = time.perf_counter()
        subprocess.run([*registry.worker, "--make", "--shape", args.shape, "--workdir", str(work)], check=True)
        print(f"model built in {time.perf_counter() - t:.0f}s", flush=True)
    if any(e.variant.stack == "unsloth" for e in entries) and not (model_dir / "tokenizer.json").is_file():
        from kielo.bench.unsloth import save_stand_in_tokenizer

        save_stand_in_tokenizer(model_dir)
    if args.peak_tflops is None and args.nproc > 1:
        args.peak_tflops = 0.0  # the multi-GPU table reports no MFU: nothing to measure
    if args.peak_tflops is None:
        # Measured in a subprocess (the parent holds no GPU memory), once for every variant of the run.
        peak = subprocess.run([*registry.worker, "--measure_peak"], check=True, capture_output=True, text=True)
        args.peak_tflops = float(peak.stdout.split()[-1]) or 0.0
        print(f"bf16 GEMM rate: {args.peak_tflops} TFLOP/s" if args.peak_tflops else "no GPU: MFU not reported", flush=True)
    from kielo.bench.parity import add_parity
    from kielo.bench.report import table, versions

    meta = {"shape": args.shape, "cases": args.cases, "versions": versions(), **{k: getattr(args, k) for k in DATA_ARGS}}
    if args.nproc > 1:
        from kielo.bench.multigpu import run_entries, table

        meta["nproc"] = args.nproc

        def write(results: list[dict]) -> None:
            (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))

        results = run_entries(entries, args, registry, model_dir, grads_dir, work, write)
        print(json.dumps(meta["versions"]))
        print(table(results))
        return 0
    results: list[dict] = []
    for entry in entries:
        result_file = work / f"result-{args.shape}-{entry.name}.json"
        if entry.reuse:
            if result_file.is_file():
                results += [{**r, "reused": True} for r in json.loads(result_file.read_text())]
            continue
        results += run_worker(entry, args, registry, model_dir, grads_dir, result_file)
        add_parity(results, grads_dir)
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps(meta["versions"]))
    print(table(results))
    return 0


def run_worker(entry: CaseEntry, args, registry: Registry, model_dir: Path, grads_dir: Path, result_file: Path) -> list[dict]:
    """One variant's cases in a fresh process; the results it wrote, and an error row for each case it did not
    finish (a crash, or running past --worker_timeout)."""
    result_file.unlink(missing_ok=True)
    cmd = worker_command(entry, args, registry, model_dir, grads_dir, result_file)
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=args.worker_timeout)
        failed = proc.returncode != 0 and f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        failed = f"timed out after {args.worker_timeout}s"
    print(f"{entry.name}: {time.perf_counter() - t:.0f}s", flush=True)
    done = json.loads(result_file.read_text()) if result_file.is_file() else []
    return failed_rows(entry, done, failed)
