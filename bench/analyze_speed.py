"""Benchmark: `analyze_data` on 100,000 synthetic-but-realistic examples, on the machine's cores.

The examples recombine the bundled Finnish data (sentences of several same-task rows joined, inputs
stacked, dialogues spliced, numbers changed), so lengths have a long tail and exact duplicates are rare,
as in real data. Timed with the tiny test tokenizer and, when it is available, the default model's.

    .venv/bin/python bench/analyze_speed.py [--examples 100000] [--out /tmp/kielo-bench]

Run it with KIELO_CACHE pointing at a converted default model to include Gemma without a conversion.

Measured 2026-11-27, 100,000 examples (25.5 M Gemma tokens), 2 cores of an idle Xeon (taskset -c 0,1),
report included: Gemma 3 tokenizer 42.7 s wall (73.6 CPU-s), tiny test tokenizer 47.4 s (82.0 CPU-s),
with py3langid alone; lingua (the second language detector) adds ~9 CPU-s in one worker, ~5 s wall.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "data" / "fi_instruct" / "train.jsonl"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\d+")


def _renumber(text: str, rng: random.Random) -> str:
    return _NUMBER.sub(lambda m: str(rng.randint(1, 999)) if rng.random() < 0.5 else m.group(0), text)


def synthesize(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows recombined from the bundled training data (alpaca rows and chat dialogues)."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    sentences = {task: [s for r in group for s in _SENTENCE.split(r.get("output", "")) if s] for task, group in by_task.items()}
    pairs = [
        (a, b)
        for r in by_task["dialogue"]
        for a, b in zip(r["messages"], r["messages"][1:], strict=False)
        if a["role"] == "user" and b["role"] == "assistant"
    ]
    out = []
    for _ in range(n):
        base = rng.choice(rows)
        task = base["task"]
        # Mostly short answers, sometimes long ones: a long tail of lengths, as real data has.
        k = rng.choice((1, 1, 2, 2, 3, 4, 6, 12, 30))
        if "messages" in base:
            turns = [m for pair in rng.sample(pairs, min(k, 4)) for m in pair]
            out.append(
                {
                    "task": task,
                    "answer_lang": base["answer_lang"],
                    "messages": [{**m, "content": _renumber(m["content"], rng)} for m in turns],
                }
            )
            continue
        instruction = base["instruction"]
        if rng.random() < 0.5:
            instruction += " " + rng.choice(_SENTENCE.split(rng.choice(by_task[task])["instruction"]))
        inputs = [r["input"] for r in [base] + rng.sample(by_task[task], min(k, 6) - 1) if r.get("input")]
        out.append(
            {
                "task": task,
                "answer_lang": base["answer_lang"],
                "instruction": _renumber(instruction, rng),
                "input": _renumber("\n\n".join(inputs), rng),
                "output": _renumber(" ".join(rng.choice(sentences[task]) for _ in range(k)), rng),
            }
        )
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def tiny_model(folder: Path) -> Path:
    """The test suite's tiny random model and tokenizer (tests/conftest.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_model

    return build_model(folder, "llama")


def time_one(label: str, model: str, files: list[Path], out: Path, workers: int | None) -> dict:
    from kielo.analyze import analyze_data
    from kielo.config.load import load_config

    config = load_config(overrides={"model": model})
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = analyze_data(files, config, output_dir=out / label, workers=workers)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    n = result["timing"]["examples"]
    return {
        "tokenizer": label,
        "examples": n,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "examples_per_s": round(n / wall),
        "workers": result["timing"]["workers"],
        "analysis_s": result["timing"]["seconds"],
        "phases_s": result["timing"]["phases"],
        "tokens": sum(s["tokens"] for s in result["splits"].values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--out", default=None, help="folder for the data and reports (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the available cores)")
    parser.add_argument("--no-gemma", action="store_true", help="skip the default model's tokenizer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="kielo: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the kielo command sets it
    out = Path(args.out or tempfile.mkdtemp(prefix="kielo-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    rows = synthesize(args.examples)
    split = int(len(rows) * 0.95)
    files = [write_jsonl(rows[:split], out / "train.jsonl"), write_jsonl(rows[split:], out / "dev.jsonl")]
    models = {"tiny test tokenizer": str(tiny_model(out / "tiny-llama"))}
    if not args.no_gemma:
        from kielo.model import default

        # Only when already converted: converting the default model is not what is being timed.
        if (default.default_model_dir() / "config.json").is_file():
            models["gemma-3-270m"] = default.ALIAS
        else:
            print(f"gemma-3-270m skipped: not converted in {default.cache_root()} (set KIELO_CACHE)")

    load = os.getloadavg()[0]
    results = [time_one(label, model, files, out, args.workers) for label, model in models.items()]
    detectors = "py3langid + lingua" if importlib.util.find_spec("lingua") else "py3langid only (lingua missing)"
    report = {
        "examples": args.examples,
        "cores": len(os.sched_getaffinity(0)),
        "language_detectors": detectors,
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "results": results,
    }
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    print(f"\n{'tokenizer':<22} {'examples':>9} {'wall s':>7} {'cpu s':>7} {'examples/s':>11}")
    for r in results:
        print(f"{r['tokenizer']:<22} {r['examples']:>9} {r['wall_s']:>7} {r['cpu_s']:>7} {r['examples_per_s']:>11}")
    print(
        f"({report['cores']} cores, {detectors}; load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after: other work on the machine slows the numbers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
