"""Generate one answer and hand out its text while it is being generated.

The text is decoded from all tokens so far and only the new part is handed out, held back where it
might still change: an incomplete UTF-8 character, or the beginning of a stop string (which is cut from
the answer, so it must never be shown). Everything runs in the caller's thread, so Ctrl-C raises
``KeyboardInterrupt`` out of :func:`stream_answer` and stops the generation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.streamers import BaseStreamer

from kielo.config.schema import GenerationConfig
from kielo.infer.generate import Generation, cut_at_stop, generation_kwargs, stop_ids, to_generation
from kielo.model.bundle import Bundle


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may still turn into a stop string or a whole character."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-n:]):
                keep = max(keep, n)
                break
    while keep < len(text) and text[-keep - 1] == "\ufffd":  # a multi-byte character not yet complete
        keep += 1
    return keep


class TextStream(BaseStreamer):
    """A ``generate`` streamer that calls ``on_text`` with each new piece of the answer's text."""

    def __init__(self, bundle: Bundle, stops: list[str], on_text: Callable[[str], None]):
        self.tokenizer = bundle.tokenizer
        self.end_ids = set(stop_ids(bundle))
        self.stops = stops
        self.on_text = on_text
        self.ids: list[int] = []
        self.shown = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        body = self.ids
        for k, t in enumerate(body):
            if t in self.end_ids:
                body = body[:k]
                break
        # Leading whitespace is stripped from answers, so it is never shown either.
        text = self.tokenizer.decode(body, skip_special_tokens=True).lstrip()
        cut, stop = cut_at_stop(text, self.stops)
        if stop is None and not final:
            cut = text[: len(text) - _held_back(text, self.stops)]
        if len(cut) > self.shown:
            self.on_text(cut[self.shown :])
            self.shown = len(cut)


@torch.no_grad()
def stream_answer(bundle: Bundle, messages: list[dict], g: GenerationConfig, on_text: Callable[[str], None]) -> Generation:
    """Answer one conversation with settings ``g``, calling ``on_text`` with the text as it is generated.

    Sampling is seeded with ``g.seed`` first, so the same conversation and settings give the same answer.
    """
    ids = torch.tensor([bundle.encoder.prompt_ids(messages)], device=bundle.device)
    if g.temperature > 0:
        torch.manual_seed(g.seed)
    bundle.model.eval()
    out = bundle.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        streamer=TextStream(bundle, list(g.stop), on_text),
        **generation_kwargs(bundle, g),
    )
    return to_generation(bundle, out[0, ids.shape[1] :].tolist(), g)
