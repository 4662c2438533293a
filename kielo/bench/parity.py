"""How close each case's training is to stock's on the same data: per-step loss differences and the cosine of
the first two steps' LoRA gradients, and the cosine against the fp32 reference (``ref``) where it ran."""

from __future__ import annotations

from pathlib import Path

import torch

from kielo.bench.cases import DATA
from kielo.bench.worker import grads_file


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened gradients, in float64."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def grad_cosines(r: dict, other: dict, grads_dir: Path) -> list[float]:
    """The LoRA-gradient cosines of ``r`` against ``other`` for the steps both kept."""
    out = []
    for i in range(2):
        mine, theirs = grads_file(grads_dir, r["variant"], r["case"], i), grads_file(grads_dir, other["variant"], other["case"], i)
        if mine.exists() and theirs.exists():
            out.append(round(cosine(torch.load(mine, weights_only=True), torch.load(theirs, weights_only=True)), 6))
    return out


def add_parity(results: list[dict], grads_dir: Path) -> None:
    """Per-step |loss difference| and LoRA-gradient cosine of every case against stock's plain case on the same
    data, and the gradient cosine against the fp32 reference (``ref``) where it ran: how far each path, stock
    included, is from the same computation done in fp32."""

    def base_of(name: str) -> dict:
        return {r["data"]: r for r in results if r.get("variant") == name and r.get("case") in DATA}

    stock, ref = base_of("stock"), base_of("ref")
    for r in results:
        if "error" in r:
            continue
        base = stock.get(r.get("data"))
        if base is not None and r is not base:
            deltas = [abs(x - y) for x, y in zip(r["losses"], base["losses"], strict=False)]
            r["loss_delta"] = [round(d, 5) for d in deltas]
            r["max_loss_delta"] = round(max(deltas), 5)
            r["grad_cosine"] = grad_cosines(r, base, grads_dir)
        exact = ref.get(r.get("data"))
        if exact is not None and r is not exact:
            r["grad_cosine_ref"] = grad_cosines(r, exact, grads_dir)
