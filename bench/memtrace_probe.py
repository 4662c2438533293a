"""Record CUDA allocations during a short `kielo train` on the GPU-test model and write the snapshot.

python bench/memtrace_probe.py OUT_DIR [stream]
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    out = Path(sys.argv[1])
    stream = sys.argv[2] if len(sys.argv) > 2 else "auto"
    import kielo.train.trainer as trainer
    import tests.test_gpu as tg

    orig = trainer.train

    def traced(config, progress=False):
        torch.cuda.memory._record_memory_history(max_entries=400000)
        try:
            return orig(config, progress=False)
        finally:
            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            (out / f"snap-{stream}.pickle").write_bytes(pickle.dumps(snap))

    trainer.train = traced
    try:
        tg.test_kielo_train_plans_its_memory(Path(tempfile.mkdtemp()), stream)
    except AssertionError as e:
        print("assertion:", str(e).splitlines()[0])


if __name__ == "__main__":
    main()
