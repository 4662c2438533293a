"""The bench's data, in random tokens: a = full rows, every position trained; b = variable-length instruction-like
examples; p = preference pairs (``kielo.bench.dpo``). Every stack gets the same examples in every optimizer step;
only their micro-batch layout differs."""

from __future__ import annotations

import math
import random

import torch

# How a stack lays out one optimizer step's examples: padded groups; packed rows (kielo, where it packs); and
# TRL's two padding-free layouts as Unsloth's trainer uses them (``kielo.bench.trl_layout``): each micro-batch
# concatenated into one row, of ``mbs`` examples or of ``mbs`` rows packed best-fit decreasing.
LAYOUTS = ("padded", "packed", "padding_free", "trl_packed")


def full_examples(steps: int, batch: int, seq: int, vocab: int, seed: int) -> list[list]:
    """Data a: per step, ``batch`` rows of ``seq`` random tokens, every next token trained."""
    from kielo.data.encode import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        rows = torch.randint(0, vocab - 1, (batch, seq), generator=g).tolist()
        out.append([Encoded(r, list(r), 0, seq) for r in rows])
    return out


def instruction_examples(steps: int, per_step: int, max_len: int, vocab: int, seed: int) -> list[list]:
    """Data b: per step, ``per_step`` examples with log-normal lengths (mean ~300, a tail to ``max_len``) whose
    first 20-70% is a prompt (labels -100): the shape of instruction data, in random tokens."""
    from kielo.data.encode import IGNORE, Encoded

    rng = random.Random(seed)
    out, index = [], 0
    for _ in range(steps):
        step = []
        for _ in range(per_step):
            n = max(16, min(max_len, int(rng.lognormvariate(math.log(300) - 0.405, 0.9))))
            ids = [rng.randrange(vocab - 1) for _ in range(n)]
            p = int(n * rng.uniform(0.2, 0.7))
            step.append(Encoded(ids, [IGNORE] * p + ids[p:], p, n - p, index=index))
            index += 1
        out.append(step)
    return out


def micro_batches(examples: list, layout: str, mbs: int, max_len: int, pad_id: int) -> list:
    """One optimizer step's examples as kielo Batches: ``padded`` groups of ``mbs`` examples, ``packed``
    first-fit into rows of ``max_len``, ``mbs`` rows per micro-batch, or TRL's ``padding_free`` / ``trl_packed``."""
    from kielo.data.batches import collate_packed, collate_padded, pack_rows

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if layout in ("padding_free", "trl_packed"):
        from kielo.bench import trl_layout

        if layout == "padding_free":
            return trl_layout.padding_free(examples, mbs, pad_id)
        return trl_layout.packed(examples, mbs, max_len, pad_id)
    if layout == "packed":
        rows = pack_rows(examples, max_len)
        return [collate_packed(rows[i : i + mbs], pad_id) for i in range(0, len(rows), mbs)]
    return [collate_padded(examples[i : i + mbs], pad_id) for i in range(0, len(examples), mbs)]


def warmup_steps(data: str, args) -> int:
    """The untimed steps of a case on data ``data``."""
    return {"a": args.warmup_a, "b": args.warmup_b, "p": args.warmup_p}[data]


def case_steps(data: str, args, vocab: int) -> list[list]:
    """The examples (pairs, for p) of every optimizer step (warm-up and timed) of a case on data ``data``, sized by
    the CLI's arguments; the same seeds for every variant."""
    if data == "a":
        return full_examples(args.warmup_a + args.timed_a, args.batch, args.seq, vocab, seed=1)
    if data == "p":
        from kielo.bench.dpo import pair_examples

        return pair_examples(args.warmup_p + args.timed_p, args.pairs_per_step, args.max_length, vocab, 3, args.pair_tokens)
    return instruction_examples(args.warmup_b + args.timed_b, args.examples_per_step, args.max_length, vocab, seed=2)


def example_tokens(example) -> int:
    """Real tokens of one example, or of both rows of a pair (each goes through the model with its prompt)."""
    return example.length
