"""Batched generation in the training prompt format, stopping at the trained end token.

Prompts are left-padded so every row's answer starts at the same column; decoding stops per row at the
end token the template trained (and the tokenizer's eos). Stop strings (``generation.stop``) end a row early
too; the answer is cut where the first one begins.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kielo.config.schema import GenerationConfig
from kielo.model.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    tokens: int  # generated tokens, end token included
    ended: bool  # stopped at the end token before max_new_tokens
    stop: str | None = None  # the stop string that ended the answer (cut from ``text``), if one did


def stop_ids(bundle: Bundle) -> list[int]:
    ids = [bundle.template.end_token_id]
    eos = bundle.tokenizer.eos_token_id
    if eos is not None and eos not in ids:
        ids.append(eos)
    return ids


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """``text`` up to the earliest stop string (the longest of those starting there) and that string, or None."""
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    at, stop = min(hits, key=lambda h: (h[0], -len(h[1])))
    return text[:at], stop


class DecodedStop:
    """Stops a row once its decoded answer contains a stop string: the fallback for tokenizers whose vocabulary
    transformers' ``StopStringCriteria`` can't index. Slower (it decodes every row each step), never wrong."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops, self.start = tokenizer, stops, None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1] - 1  # the first call sees the prompt and one generated token
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)


def _stop_criteria(tokenizer, stops: list[str]):
    """transformers' ``StopStringCriteria`` when it can be built for this tokenizer, else :class:`DecodedStop`."""
    from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

    try:
        criteria = StopStringCriteria(tokenizer, stops)
    except Exception as e:  # noqa: BLE001 - it fails in several ways (index, value, key errors) on unusual vocabularies
        log.debug("StopStringCriteria can't be built for this tokenizer (%s); stop strings are checked on decoded text", e)
        criteria = type("DecodedStopCriteria", (DecodedStop, StoppingCriteria), {})(tokenizer, stops)
    return StoppingCriteriaList([criteria])


def _sampling_kwargs(g: GenerationConfig) -> dict:
    if g.temperature <= 0:
        return {"do_sample": False}
    kw = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p}
    if g.top_k:
        kw["top_k"] = g.top_k
    return kw


def generation_kwargs(bundle: Bundle, g: GenerationConfig) -> dict:
    """Keyword arguments for ``model.generate``: length, stopping, padding and sampling from ``g``."""
    kw = dict(
        max_new_tokens=g.max_new_tokens,
        eos_token_id=stop_ids(bundle),
        pad_token_id=bundle.tokenizer.pad_token_id,
        repetition_penalty=g.repetition_penalty,
        **_sampling_kwargs(g),
    )
    if g.stop:
        # A row stops once its decoded text contains a stop string; the cut happens in to_generation.
        kw.update(stopping_criteria=_stop_criteria(bundle.tokenizer, list(g.stop)))
    return kw


def to_generation(bundle: Bundle, row: list[int], g: GenerationConfig) -> Generation:
    """Decode one row of generated ids: up to the end token, then cut at the first stop string."""
    stops = stop_ids(bundle)
    end = next((k for k, t in enumerate(row) if t in stops), None)
    body = row[:end] if end is not None else row
    if g.stop and end is None:
        # A row ended by a stop string is padded to the batch's length; the padding was never generated.
        pad = bundle.tokenizer.pad_token_id
        while body and body[-1] == pad:
            body = body[:-1]
    text, stop = cut_at_stop(bundle.tokenizer.decode(body, skip_special_tokens=True), g.stop)
    return Generation(text.strip(), len(body) + (end is not None), end is not None and stop is None, stop)


@torch.no_grad()
def generate(
    bundle: Bundle, conversations: list[list[dict]], g: GenerationConfig | None = None, progress=None
) -> tuple[list[Generation], float]:
    """Answer each conversation (messages ending with the user's turn). Returns generations and tokens/s."""
    g = g or bundle.config.generation
    tok, model = bundle.tokenizer, bundle.model
    results: list[Generation | None] = [None] * len(conversations)
    # Sort by prompt length so batches waste little padding; results go back in input order.
    prompts = [(i, bundle.encoder.prompt_ids(c)) for i, c in enumerate(conversations)]
    prompts.sort(key=lambda x: len(x[1]))
    generated, started = 0, time.time()
    was_training = model.training
    model.eval()
    if g.temperature > 0:
        torch.manual_seed(g.seed)
    for at in range(0, len(prompts), g.batch_size):
        chunk = prompts[at : at + g.batch_size]
        width = max(len(p) for _, p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (_, p) in enumerate(chunk):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        out = model.generate(input_ids=ids.to(bundle.device), attention_mask=mask.to(bundle.device), **generation_kwargs(bundle, g))[
            :, width:
        ].tolist()
        for (i, _), row in zip(chunk, out, strict=True):
            results[i] = to_generation(bundle, row, g)
            generated += results[i].tokens
        if progress is not None:
            progress(len(chunk))
    if was_training:
        model.train()
    return results, generated / max(time.time() - started, 1e-9)  # type: ignore[return-value]
