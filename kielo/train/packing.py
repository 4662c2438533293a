"""What a decoder is given for a packed row, so that the examples in the row never attend to each other.

A packed row (``kielo.data.batches.collate_packed``) holds several examples one after another, with
``position_ids`` restarting at 0 at each. How a decoder is kept inside each example depends on how it
encodes positions:

- Decoders that take ``position_ids`` (Llama, Gemma, ...) get them and no attention mask: transformers derives
  a block-diagonal causal mask from where the positions restart (and varlen kernels use them on GPU).
- BLOOM takes no position ids; its positions are ALiBi, a bias ``slope_h * j`` added to the score of query
  ``i`` on key ``j`` (transformers adds the key's position only: the ``-slope_h * i`` of the distance is the
  same for every key of a query, and softmax ignores a constant added to a whole row). The same argument
  makes packing work: if query ``i`` sees only the keys of its own example, which starts at ``o`` in the row,
  the bias from row positions, ``slope_h * (o + j')``, is the bias from positions within the example,
  ``slope_h * j'``, plus ``slope_h * o``, a constant over every key ``i`` can see, so softmax cancels it. A
  packed BLOOM row therefore needs only (1) ALiBi from the plain row positions 0..L-1 and (2) a
  block-diagonal causal mask. The mask goes in as a 4D additive ``attention_mask``, which transformers'
  ``create_causal_mask`` passes through unchanged and BLOOM's eager attention adds to its scores; BLOOM
  would also build ALiBi from that mask (a cumsum over a 2D padding mask), so the decoder gets a
  ``build_alibi_tensor`` that, given a 4D mask, builds it from plain positions instead (:func:`packing_support`
  installs it).
- Any other decoder can't pack: :func:`require_packing_support` says so.

Checked against transformers 5.17 and 5.24: both pass a 4D mask through ``create_causal_mask`` and call
the instance's ``build_alibi_tensor`` whenever a mask is given.
"""

from __future__ import annotations

import inspect
import types

import torch

from kielo.data.batches import Batch
from kielo.errors import KieloError
from kielo.model.adapter import causal_lm
from kielo.model.varlen import uses_varlen

POSITION_IDS = "position_ids"
ALIBI = "alibi"


def _alibi_for_packed_rows(self, attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """``BloomModel.build_alibi_tensor`` that also takes a 4D block mask: then ALiBi of positions 0..L-1.

    The library's function on an all-ones 2D mask gives exactly those positions (its cumsum - 1), in its own
    shape and dtype; a 2D padding mask goes to it unchanged.
    """
    if attention_mask.ndim == 4:
        batch, keys = attention_mask.shape[0], attention_mask.shape[-1]
        attention_mask = torch.ones((batch, keys), dtype=torch.long, device=attention_mask.device)
    return type(self).build_alibi_tensor(self, attention_mask, num_heads, dtype)


def packing_support(model) -> str | None:
    """How ``model``'s decoder keeps packed examples apart: ``"position_ids"``, ``"alibi"`` or None (it can't).

    For ALiBi (BLOOM) this installs the packed-row ALiBi on the decoder instance, once; it changes nothing for
    2D masks. ``model`` may be wrapped by PEFT.
    """
    lm = causal_lm(model)
    decoder = lm.base_model  # `.model` for Llama/Gemma, `.transformer` for BLOOM (base_model_prefix)
    if POSITION_IDS in inspect.signature(decoder.forward).parameters:
        return POSITION_IDS
    if lm.config.model_type == "bloom" and hasattr(type(decoder), "build_alibi_tensor"):
        if getattr(decoder.build_alibi_tensor, "__func__", None) is not _alibi_for_packed_rows:
            # Bound to the instance (not a closure over it), so a deep copy of the model gets its own.
            decoder.build_alibi_tensor = types.MethodType(_alibi_for_packed_rows, decoder)
        return ALIBI
    return None


def require_packing_support(model) -> str:
    """:func:`packing_support`, or a :class:`KieloError` with the fix when the model can't pack."""
    kind = packing_support(model)
    if kind is None:
        decoder = causal_lm(model).base_model
        raise KieloError(
            f"data.packing needs a model that takes position ids or uses BLOOM's ALiBi; {type(decoder).__name__} "
            "does neither (its examples would attend to each other)",
            "set data.packing: false for this model",
        )
    return kind


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (B, 1, L, L) of a packed batch: 0 where query i may see key j, else the dtype's min.

    i sees j iff j <= i and both are in the same segment; a segment starts wherever the positions restart
    (``position_ids[t] != position_ids[t - 1] + 1``, the rule of transformers' ``find_packed_sequence_indices``),
    so a row's trailing padding is a segment of its own.
    """
    batch, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    segment = starts.cumsum(dim=-1)
    causal = torch.ones((length, length), dtype=torch.bool, device=position_ids.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros((batch, 1, length, length), dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def model_inputs(model, batch: Batch) -> dict:
    """The decoder's inputs for ``batch``: padded batches as :meth:`Batch.model_inputs` gives them; packed ones
    with position ids, or for ALiBi decoders with a block-diagonal causal mask instead."""
    if batch.position_ids is None or require_packing_support(model) == POSITION_IDS:
        inputs = batch.model_inputs()
        # Only rows that hold several segments: a row that is one example is plain causal attention, where SDPA's
        # cuDNN kernel beat varlen's flash kernel (Llama-8B full rows, H100: 10,193 vs 9,561 tok/s; bench/NOTES.md).
        several = batch.cu_seqlens is not None and batch.cu_seqlens.numel() - 1 > batch.input_ids.shape[0]
        if several and uses_varlen(causal_lm(model)):
            # transformers' flash-attention keywords: every decoder layer passes them on to its attention.
            inputs |= {"cu_seq_lens_q": batch.cu_seqlens, "max_length_q": batch.max_seqlen}
        return inputs
    # The mask's dtype is the one transformers gives its own masks: that of the input embeddings.
    dtype = causal_lm(model).get_input_embeddings().weight.dtype
    return {"input_ids": batch.input_ids, "attention_mask": block_causal_mask(batch.position_ids, dtype)}
