"""What is alive at the peak of a CUDA memory trace, grouped by the code that allocated it.

Reads a snapshot written by the bench's ``memtrace`` case option or ``bench/memtrace_probe.py``
(``torch.cuda.memory._snapshot()`` with allocation history) and replays its allocation events: the largest
groups of blocks alive at the highest point, each named by the first frames from kielo, transformers, peft,
bitsandbytes, Liger or torch's autograd. Runs anywhere (no GPU needed).

    python bench/memtrace_report.py SNAPSHOT.pickle [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import pickle

LIBRARIES = (
    "kielo/",
    "transformers/",
    "peft/",
    "bitsandbytes/",
    "liger",
    "torch/utils/checkpoint",
    "torch/nn/functional",
    "torch/autograd",
)


def where(frames: list[dict], depth: int = 3) -> str:
    """The first ``depth`` frames that belong to the libraries above (the C++ frame name when there are none)."""
    named = [
        f"{f['filename'].split('site-packages/')[-1]}:{f['line']}:{f['name']}"
        for f in frames
        if any(lib in f["filename"] for lib in LIBRARIES)
    ]
    return " < ".join(named[:depth]) or (frames[0]["name"] if frames else "?")


def peak_blocks(events: list[dict]) -> tuple[int, dict]:
    """Bytes above the start of recording at the highest point, and the blocks alive then (addr -> event)."""
    live, current, peak, at_peak = {}, 0, 0, {}
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            current += e["size"]
        elif e["action"] == "free_completed" and e["addr"] in live:
            current -= live.pop(e["addr"])["size"]
        if current > peak:
            peak, at_peak = current, dict(live)
    return peak, at_peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("snapshot")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    snap = pickle.loads(open(args.snapshot, "rb").read())
    events = snap["device_traces"][0]
    peak, blocks = peak_blocks(events)
    print(f"{len(events)} events; peak {peak / 2**30:.3f} GiB above the start of recording")
    sizes, counts = collections.Counter(), collections.Counter()
    for e in blocks.values():
        key = where(e.get("frames", []))
        sizes[key] += e["size"]
        counts[key] += 1
    for key, size in sizes.most_common(args.top):
        print(f"{size / 2**20:9.1f} MiB x{counts[key]:<5d} {key[:220]}")


if __name__ == "__main__":
    main()
