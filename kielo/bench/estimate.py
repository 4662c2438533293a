"""The memory planner's estimate for a bench case, printed beside the measured peak."""

from __future__ import annotations

from dataclasses import asdict

from kielo.bench.cases import Case, Variant
from kielo.bench.models import Loaded
from kielo.bench.steps import case_loss


def planned(loaded: Loaded, variant: Variant, case: Case, micro: list) -> dict:
    """kielo's memory planner's estimate for a case that is a kielo configuration (nothing for the others:
    stock, Unsloth, the fp32 reference and experiments the planner does not model), and the planner's inputs
    (``plan_setup``, with the shape: tests/test_plan.py recomputes the estimate from them)."""
    from kielo.model.adapter import causal_lm
    from kielo.model.offload import offloading
    from kielo.plan.memory import GIB, Setup, estimate
    from kielo.plan.shape import shape_from_config
    from kielo.train.loss import fused_loss_sum

    if loaded.path is None or not variant.planned or not case.planned:
        return {}
    lm = causal_lm(loaded.model)
    batches = [b for mb in micro for b in mb]
    # A mask exists where a row holds several examples (positions restart) or padding.
    masked = any(
        bool((b.position_ids[:, 1:] == 0).any()) if b.position_ids is not None else not bool(b.attention_mask.all()) for b in batches
    )
    setup = Setup(
        stream_bytes=lm.get_input_embeddings().weight.element_size(),
        liger=loaded.path.precision.liger,
        fused_head=case_loss(loaded, case) is fused_loss_sum,
        lora_r=16,
        lora_dropout=0.0,
        gradient_checkpointing=case.gc != 0,
        checkpoint_offload=case.gc != 0 and offloading(loaded.model),  # what the load chose for this model
        tokens=max(b.input_ids.numel() for b in batches),
        row_width=max(b.input_ids.shape[1] for b in batches),
        trained=max(b.trained_tokens for b in batches),
        masked=masked,
    )
    return {"planned_gib": round(estimate(shape_from_config(lm.config), setup).total / GIB, 2), "plan_setup": asdict(setup)}
