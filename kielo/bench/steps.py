"""One optimizer step of each stack: stock's and Unsloth's as their anchor scripts take it (full logits, the
model's own loss, AdamW), kielo's through the library's step (``kielo.train.step.accumulate_gradients``) with
the loss head its training path, or the case, names."""

from __future__ import annotations

import functools
from contextlib import ExitStack

import torch

from kielo.bench.cases import Case
from kielo.bench.models import Loaded, kielo_config


def stock_step(model, micro: list, device: torch.device) -> float:
    """Forward with full logits and the model's loss; normalized by the step's trained tokens
    (``num_items_in_batch``), as transformers' Trainer does with gradient accumulation.

    Padded rows get kielo's attention mask (all ones on data a; the anchor passes none: for Llama the same
    computation, transformers skips an all-ones mask; for Gemma 3 it may not be). TRL's padding-free rows
    (Unsloth's layouts) get what its SFT trainer passes instead: restarting position ids, no attention mask,
    and the ``packed_seq_lengths`` Unsloth's collator wrapper adds, from which its attention builds the
    per-example masks.
    """
    from kielo.bench.trl_layout import packed_seq_lengths

    n = sum(b.trained_tokens for b in micro)
    total = 0.0
    for b in micro:
        if b.position_ids is None:
            b = b.to(device)
            inputs = {"attention_mask": b.attention_mask}
        else:
            lengths = packed_seq_lengths(b.position_ids)
            b = b.to(device)
            inputs = {"position_ids": b.position_ids, "packed_seq_lengths": lengths}
        out = model(input_ids=b.input_ids, labels=b.labels, num_items_in_batch=n, **inputs)
        out.loss.backward()
        total += float(out.loss.detach())
    return total


def case_loss(loaded: Loaded, case: Case):
    """The loss head a kielo case computes: a case option's, else its training path's."""
    chosen = [o.loss for o in case.extra if o.loss is not None]
    return chosen[0] if chosen else loaded.path.loss


def head_name(loaded: Loaded, case: Case) -> str:
    """The loss head as recorded in results.json: ``model`` (the stack's own), ``chunked``, ``liger`` (Liger's
    fused linear cross-entropy) or the function's name; on data p ``trl`` (TRL's fused log-prob head) or kielo's
    preference head (``dpo_chunked``, ``dpo_chunked_recompute`` on the Liger path: ``kielo.train.preference.sequence_logps``)."""
    from kielo.train.loss import chunked_loss_sum, fused_loss_sum

    if loaded.path is None:
        return "trl" if case.data == "p" else "model"
    if case.data == "p":
        return "dpo_chunked_recompute" if loaded.path.precision.liger else "dpo_chunked"
    loss = case_loss(loaded, case)
    return {chunked_loss_sum: "chunked", fused_loss_sum: "liger"}.get(loss, getattr(loss, "__name__", "custom"))


def step_function(loaded: Loaded, case: Case):
    """``(model, micro, device) -> loss``: one step's forward and backward for this stack and case (the mean
    token loss; the mean pair loss of a DPO step on data p)."""
    if case.data == "p":
        from kielo.bench.dpo import kielo_dpo_step, stock_dpo_step

        return stock_dpo_step(loaded.model) if loaded.path is None else kielo_dpo_step(loaded)
    if loaded.path is None:
        return stock_step
    from kielo.train.step import accumulate_gradients

    return functools.partial(accumulate_gradients, loss=case_loss(loaded, case))


def optimizer(loaded: Loaded, params: list, device: torch.device):
    """The anchors' plain AdamW for stock and Unsloth; kielo's optimizer from kielo's config for kielo."""
    if loaded.path is None:
        return torch.optim.AdamW(params, lr=1e-4)
    from kielo.train.optim import build_optimizer

    return build_optimizer(params, kielo_config().training, device)


def step_context(case: Case, device: torch.device) -> ExitStack:
    """The contexts the case's extra options enter around each step (none for the product's options)."""
    stack = ExitStack()
    for option in case.extra:
        if option.context is not None:
            stack.enter_context(option.context(device))
    return stack
