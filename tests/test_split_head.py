"""The split fp32 loss head (kielo.train.split_head): fp32-exact loss and gradient from compute-dtype parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kielo.train import split_head
from kielo.train.split_head import SplitHeadLoss, split_mm


def reference(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, cap: float | None):
    h = h.detach().double().requires_grad_(True)
    z = h @ w.double().t()
    if cap:
        z = torch.tanh(z / cap) * cap
    loss = F.cross_entropy(z, y, reduction="sum")
    loss.backward()
    return loss.detach(), h.grad


@pytest.mark.parametrize("cap", [None, 30.0])
def test_split_head_matches_fp64_and_beats_a_bf16_head(cap, monkeypatch):
    monkeypatch.setattr(split_head, "CHUNK_BYTES", 4 * 50 * 7)  # 7 rows a chunk: several chunks, a ragged last
    g = torch.Generator().manual_seed(0)
    h = torch.randn(30, 64, generator=g) * 3
    w = (torch.randn(50, 64, generator=g) * 0.3).to(torch.bfloat16)
    y = torch.randint(0, 50, (30,), generator=g)
    want_loss, want_grad = reference(h, w, y, cap)

    x = h.clone().requires_grad_(True)
    loss = SplitHeadLoss.apply(x, w, y, cap)
    (2 * loss).backward()  # the saved gradient is scaled by the incoming one
    assert torch.allclose(loss.double(), want_loss, rtol=1e-6)
    assert torch.allclose(x.grad.double(), 2 * want_grad, rtol=1e-4, atol=5e-5)  # fp32 softmax: ~5e-6

    # A head on bf16 operands (what the split avoids) is measurably further off: the test can tell them apart.
    z = (h.to(torch.bfloat16) @ w.t()).float()
    if cap:
        z = torch.tanh(z / cap) * cap
    bf16_loss = F.cross_entropy(z, y, reduction="sum").double()
    assert abs(bf16_loss - want_loss) > 100 * abs(loss.double() - want_loss)


def test_split_mm_keeps_sixteen_bits():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 32, generator=g)
    w = torch.randn(32, 5, generator=g).to(torch.bfloat16)
    exact = x.double() @ w.double()
    split_err = (split_mm(x, w).double() - exact).abs().max()
    hi_only_err = ((x.to(torch.bfloat16).double() @ w.double()) - exact).abs().max()
    assert split_err < hi_only_err / 100


def test_no_gradient_no_saved_tensor():
    w = torch.randn(10, 8).to(torch.bfloat16)
    with torch.no_grad():
        loss = SplitHeadLoss.apply(torch.randn(4, 8), w, torch.tensor([1, 2, 3, 4]), None)
    assert loss.ndim == 0 and torch.isfinite(loss)
