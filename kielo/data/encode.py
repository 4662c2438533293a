"""Turn examples into token ids and labels: the one place where formatting and masking happen.

Training, analysis and evaluation all call :class:`Encoder`, so the counts a report shows are the
tokens training sees.

Each conversation is rendered with the template turn by turn. The text before each assistant answer is
tokenized exactly as a prompt is at inference (``add_generation_prompt=True``), and the answer plus its end
token is tokenized after it. Labels are -100 on every prompt token (unless ``train_on_prompt``) and on
template text after the end token; the end token itself is always trained, so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kielo.data.records import Example
from kielo.data.template import Template, render
from kielo.errors import KieloError

IGNORE = -100


@dataclass
class Encoded:
    """One tokenized example."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int  # tokens before the first trained token (the prompt of a single-turn example)
    response_tokens: int  # tokens of assistant turns incl. end tokens, before truncation
    truncated: int = 0  # tokens cut by max_length
    double_bos: bool = False  # the template and tokenizer both added BOS (one was removed)
    ends_with_end_token: bool = True  # the last trained token is the end token
    index: int = 0  # position in the source list

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE)


@dataclass
class EncodeStats:
    """What encoding did to a data set: counts for reports and warnings."""

    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0  # the response was cut entirely: it would train on nothing
    tokens_lost: int = 0
    double_bos: int = 0
    dropped_sources: list[str] = field(default_factory=list)


class Encoder:
    """Formats, tokenizes and masks examples for one tokenizer and template."""

    def __init__(self, tokenizer, template: Template, max_length: int, overlong: str = "truncate", train_on_prompt: bool = False):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.overlong = overlong
        self.train_on_prompt = train_on_prompt
        self.bos_id = tokenizer.bos_token_id

    def _ids(self, text: str) -> list[int]:
        # Special tokens are already in the rendered text; never let the tokenizer add another BOS.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_text(self, messages: list[dict]) -> str:
        """The text a model is given at inference: everything up to where the answer starts."""
        return render(self.tokenizer, self.template, messages, add_generation_prompt=True)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ids = self._ids(self.prompt_text(messages))
        return self._dedupe_bos(ids)[0]

    def _dedupe_bos(self, ids: list[int]) -> tuple[list[int], bool]:
        if self.bos_id is not None and len(ids) > 1 and ids[0] == self.bos_id and ids[1] == self.bos_id:
            return ids[1:], True
        return ids, False

    def _segments(self, example: Example) -> list[tuple[str, bool]]:
        """(text, is_answer) pieces whose concatenation is the rendered conversation."""
        msgs = example.messages
        segments: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = render(self.tokenizer, self.template, msgs[:i], add_generation_prompt=True)
            through = render(self.tokenizer, self.template, msgs[: i + 1])
            if not before.startswith(done) or not through.startswith(before):
                raise KieloError(
                    f"{example.source}: the chat template renders turns inconsistently (a prefix changes when a "
                    "turn is added), so prompt and answer tokens can't be separated",
                    "use --data.template builtin",
                )
            if self.template.end_token in m["content"]:
                # The tokenizer reads the text as the end token itself: the answer would end there.
                raise KieloError(
                    f"{example.source}: answer {i} contains the end token {self.template.end_token!r} as text, so "
                    "training would stop the answer there",
                    "remove that text from the answer",
                )
            answer = through[len(before) :]
            if m["content"].strip() and not answer.replace(self.template.end_token, "").strip():
                # A template that drops or trims the answer would train the end token alone.
                raise KieloError(
                    f"{example.source}: the prompt template renders answer {i} as empty, so nothing of it would be trained",
                    "use --data.template builtin, or a chat template that writes the assistant's content",
                )
            segments.append((before[len(done) :], False))
            segments.append((answer, True))
            done = through
        return segments

    def encode(self, example: Example, index: int = 0, last_answer_only: bool = False) -> Encoded:
        """Tokenize and mask one example (no truncation; see :meth:`fit`). ``last_answer_only`` trains only the
        final assistant turn: earlier turns are part of the prompt (a preference pair's answers)."""
        segments = self._segments(example)
        if last_answer_only:
            last = max(i for i, (_, is_answer) in enumerate(segments) if is_answer)
            segments = [(text, is_answer and i == last) for i, (text, is_answer) in enumerate(segments)]
        return self._assemble([(self._ids(text), is_answer) for text, is_answer in segments], index)

    def encode_many(self, examples: list[Example], start_index: int = 0, batch_size: int = 512) -> list[Encoded]:
        """``[encode(ex, start_index + i) ...]``, bit for bit, with one tokenizer call per ``batch_size`` examples.

        Batching amortizes the tokenizer's per-call overhead (a third of the time on large data sets).
        """
        out: list[Encoded] = []
        for at in range(0, len(examples), batch_size):
            chunk = [self._segments(ex) for ex in examples[at : at + batch_size]]
            texts = [text for segments in chunk for text, _ in segments]
            # Only the ids are needed; skipping the masks saves converting two more lists per text.
            ids = iter(
                self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
                if texts
                else []
            )
            for j, segments in enumerate(chunk):
                out.append(self._assemble([(next(ids), is_answer) for _, is_answer in segments], start_index + at + j))
        return out

    def _assemble(self, pieces: list[tuple[list[int], bool]], index: int) -> Encoded:
        """Ids and labels from the tokenized (segment ids, is_answer) pieces of one conversation."""
        input_ids: list[int] = []
        labels: list[int] = []
        response_tokens = 0
        prompt_tokens = None
        double = False
        for ids, is_answer in pieces:
            if not input_ids:
                ids, double = self._dedupe_bos(ids)
            if is_answer:
                if prompt_tokens is None:
                    prompt_tokens = len(input_ids)
                # Train through the end token; template text after it (newlines) is not an answer.
                if self.template.end_token_id in ids:
                    cut = ids.index(self.template.end_token_id) + 1
                else:
                    ids = ids + [self.template.end_token_id]
                    cut = len(ids)
                trained = ids[:cut] + [IGNORE] * (len(ids) - cut)
                labels += trained if not self.train_on_prompt else ids
                response_tokens += cut
            else:
                labels += ids if self.train_on_prompt else [IGNORE] * len(ids)
            input_ids += ids
        # Scan from the end: the last trained token is near it, and this runs for every example.
        last_trained = next((i for i in range(len(labels) - 1, -1, -1) if labels[i] != IGNORE), -1)
        ends_with_end = last_trained >= 0 and input_ids[last_trained] == self.template.end_token_id
        return Encoded(
            input_ids,
            labels,
            prompt_tokens or 0,
            response_tokens,
            double_bos=double,
            ends_with_end_token=ends_with_end,
            index=index,
        )

    def fit(self, enc: Encoded) -> Encoded | None:
        """Apply ``max_length``: truncate or drop; None when nothing would be trained."""
        extra = len(enc.input_ids) - self.max_length
        if extra <= 0:
            return enc
        if self.overlong == "drop":
            return None
        enc.input_ids = enc.input_ids[: self.max_length]
        enc.labels = enc.labels[: self.max_length]
        enc.truncated = extra
        enc.ends_with_end_token = False
        return enc if enc.trained_tokens > 0 else None

    def encode_all(self, examples: list[Example]) -> tuple[list[Encoded], EncodeStats]:
        """Encode a data set, applying ``max_length``, with counts of what was cut or dropped."""
        return self.fit_all(examples, self.encode_many(examples))

    def fit_all(self, examples: list[Example], encoded: list[Encoded]) -> tuple[list[Encoded], EncodeStats]:
        """:meth:`fit` every ``encoded[i]`` (from ``examples[i]``), counting what was cut or dropped."""
        stats = EncodeStats(total=len(examples))
        out = []
        for ex, enc in zip(examples, encoded, strict=True):
            stats.double_bos += enc.double_bos
            length = len(enc.input_ids)
            fitted = self.fit(enc)
            if fitted is None:
                if self.overlong == "drop":
                    stats.dropped_overlong += 1
                else:
                    stats.dropped_no_target += 1
                stats.tokens_lost += length
                stats.dropped_sources.append(ex.source)
                continue
            if fitted.truncated:
                stats.truncated += 1
                stats.tokens_lost += fitted.truncated
            out.append(fitted)
        stats.kept = len(out)
        return out, stats
