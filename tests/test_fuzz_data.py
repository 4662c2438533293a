"""Fuzzing the row parser and the encoder: any generated row (alpaca or chat style; random unicode, empty
strings, None, wrong types, long texts) either encodes with the loss mask covering exactly each answer and its
end token, or is refused with a :class:`KieloError`. Nothing else (no TypeError, no silently empty target)."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kielo.data.encode import IGNORE, Encoder  # noqa: E402
from kielo.data.records import row_to_example  # noqa: E402
from kielo.data.template import resolve_template  # noqa: E402
from kielo.errors import KieloError  # noqa: E402
from kielo.model.load import load_tokenizer  # noqa: E402

# Text that stresses a tokenizer and a template: any unicode, whitespace, the tokenizer's own special-token
# strings and template headers pasted into content, and long runs.
PIECES = st.sampled_from(["<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "### Vastaus:\n", "{{ x }}", "\n", " ", "\t", "ä"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=8).map("".join),
    st.text(alphabet="aäö .\n", min_size=300, max_size=800),
)
ANY = st.one_of(TEXT, st.none(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=3), st.booleans())
FIELD = st.one_of(TEXT, TEXT, TEXT, ANY)  # mostly text, sometimes a wrong type
ALPACA = st.dictionaries(st.sampled_from(["instruction", "input", "output", "system", "task"]), FIELD, max_size=5)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": FIELD}),
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["bot", "", "USER"]), ANY), "content": FIELD}),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), ANY, max_size=3),
    ANY,
)
CHAT = st.fixed_dictionaries({"messages": st.one_of(st.lists(MESSAGE, max_size=6), ANY)})
ROW = st.one_of(ALPACA, CHAT, ANY)

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["builtin", "chat"])
def encoder(request, tiny_gemma):
    tok = load_tokenizer(str(tiny_gemma))
    return Encoder(tok, resolve_template(tok, request.param), max_length=10_000)


def trained_spans(labels: list[int]) -> list[list[int]]:
    """The runs of trained (not ignored) label ids, in order."""
    spans: list[list[int]] = []
    previous = IGNORE
    for label in labels:
        if label != IGNORE:
            if previous == IGNORE:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return spans


def check_row(encoder: Encoder, row) -> None:
    try:
        example = row_to_example(row, "fuzz.jsonl:1")
        encoded = encoder.encode(example)
    except KieloError as e:
        assert e.message.startswith("fuzz.jsonl:1: ") and e.fix
        return
    answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
    assert all(a.strip() for a in answers)  # an empty answer is refused, never trained
    tok, end = encoder.tokenizer, encoder.template
    assert encoded.labels != [IGNORE] * len(encoded.labels)
    assert all(label in (IGNORE, tid) for label, tid in zip(encoded.labels, encoded.input_ids, strict=True))
    spans = trained_spans(encoded.labels)
    assert len(spans) == len(answers)
    for span, answer in zip(spans, answers, strict=True):
        assert span[-1] == end.end_token_id  # every answer ends with the end token, which is trained
        assert tok.decode(span, clean_up_tokenization_spaces=False) == answer + end.end_token


@FUZZ
@given(row=ROW)
def test_any_row_encodes_with_the_answer_masked_exactly_or_is_refused(encoder, row):
    check_row(encoder, row)


@FUZZ
@given(instruction=TEXT, output=TEXT, system=st.one_of(st.none(), TEXT))
def test_any_alpaca_text_encodes_exactly_or_is_refused(encoder, instruction, output, system):
    check_row(encoder, {"instruction": instruction, "output": output, "system": system})


@FUZZ
@given(turns=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3))
def test_any_conversation_text_encodes_exactly_or_is_refused(encoder, turns):
    messages = [m for user, answer in turns for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
    check_row(encoder, {"messages": messages})


def test_the_check_catches_a_mask_that_is_off_by_one(encoder):
    """The property above is not vacuous: a label mask shifted by one token fails it."""
    row = {"instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki."}
    check_row(encoder, row)
    original = encoder._assemble

    def shifted(pieces, index):
        enc = original(pieces, index)
        enc.labels = [IGNORE] + enc.labels[:-1]
        return enc

    encoder._assemble = shifted
    try:
        with pytest.raises(AssertionError):
            check_row(encoder, row)
    finally:
        encoder._assemble = original
