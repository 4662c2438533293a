"""Interleaved A/B of kielo's fused 4-bit + LoRA node (``kielo.model.lora_forward.LoraLinear4bit``) against
the unfused LoRA forward, in one process on one loaded model: steps alternate between the two, so drift of the
machine (clocks, other tenants) hits both alike. Data a of ``kielo bench`` (batch x seq random tokens).

    WHL=.whl1 bash bench/run_qlora_bench.sh ...   # installs the wheels into /tmp/site; then, on the same machine:
    PYTHONPATH=/tmp/site:$PWD python3 bench/ab_fused_lora.py --shape llama8b --stream compute --pairs 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import kielo.model.lora_forward as lora_forward
from kielo.bench.cases import Variant
from kielo.bench.data import full_examples, micro_batches
from kielo.bench.models import kielo_config, load, make_model, trainable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama8b")
    p.add_argument("--stream", default="compute", help="kielo's training.stream_dtype")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--model-dir", help="a random model of the shape, e.g. build/qlora-bench/model-llama8b (default: build one)")
    args = p.parse_args()
    device = torch.device("cuda")
    folder = Path(args.model_dir) if args.model_dir else Path(tempfile.mkdtemp()) / args.shape
    if not (folder / "config.json").is_file():
        make_model(folder, args.shape)
    loaded = load(Variant("kielo", stream=args.stream, kernels="auto"), folder, device)
    model = loaded.model
    from kielo.train.optim import build_optimizer
    from kielo.train.step import accumulate_gradients

    params = [p for _, p in trainable(model)]
    opt = build_optimizer(params, kielo_config().training, device)
    vocab = model.config.vocab_size
    steps = full_examples(2 * args.pairs + 2, args.batch, args.seq, vocab, seed=1)
    times = {"fused": [], "unfused": []}
    for i, examples in enumerate(steps):
        mode = "fused" if i % 2 == 0 else "unfused"
        lora_forward.set_fused_lora(model, mode == "fused")
        micro = micro_batches(examples, loaded.layout, 2, args.seq, vocab - 1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        accumulate_gradients(model, micro, device, loaded.path.loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:  # the first pair compiles and warms up
            times[mode].append(time.perf_counter() - t)
    tokens = args.batch * args.seq
    med = {m: statistics.median(t) for m, t in times.items()}
    for m, t in times.items():
        print(
            f"{args.shape} {m:8} median {med[m]:.4f} s ({tokens / med[m]:,.0f} tok/s), min {min(t):.4f}, max {max(t):.4f}, n {len(t)}"
        )
    print(f"{args.shape} fused / unfused step time: {med['fused'] / med['unfused']:.3f}")


if __name__ == "__main__":
    main()
