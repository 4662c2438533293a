"""Data reading, templating, masking, truncation and packing."""

from __future__ import annotations

import json

import pytest
import torch

from kielo.data.batches import BatchLayout, collate_packed, collate_padded
from kielo.data.encode import IGNORE, Encoder
from kielo.data.records import Example, load_examples
from kielo.data.template import resolve_template
from kielo.errors import KieloError
from kielo.model.load import load_tokenizer


def write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_alpaca_and_chat_rows(data_file):
    ex = load_examples(data_file)
    assert ex[0].messages == [
        {"role": "user", "content": "Mikä on Suomen pääkaupunki?"},
        {"role": "assistant", "content": "Suomen pääkaupunki on Helsinki."},
    ]
    assert ex[1].messages[0]["content"] == "Kirjoita lyhyt runo.\n\nsyksy"
    assert ex[3].messages[-1]["role"] == "assistant"
    assert ex[0].source.endswith("train.jsonl:1")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', "d.jsonl:2: malformed JSON"),
        ('{"instruction": "a"}\n', "d.jsonl:1: missing field(s) output"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "last message is not from the assistant"),
        ('{"messages": [{"role": "bot", "content": "a"}]}\n', "role 'bot'"),
        ("[1, 2]\n", "expected a JSON object"),
        ("\n\n", "holds no examples"),
    ],
)
def test_bad_rows_name_file_line_and_problem(tmp_path, text, fragment):
    with pytest.raises(KieloError) as e:
        load_examples(write(tmp_path, text))
    assert fragment in e.value.message and e.value.fix


CHAT_EMPTY = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"instruction": "a", "output": None}, "d.jsonl:1: `output` is null"),
        ({"instruction": "a", "output": ""}, "d.jsonl:1: `output` is empty"),
        ({"instruction": "a", "output": " \n\t"}, "d.jsonl:1: `output` is empty"),
        ({"messages": [*CHAT_EMPTY["messages"], {"role": "assistant", "content": " "}]}, "message 3 (assistant) is empty"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}, "message 1 (assistant) is empty"),
    ],
)
def test_rows_without_an_answer_are_refused_for_training(tmp_path, row, fragment):
    path = write(tmp_path, json.dumps({"instruction": "ok", "output": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(KieloError) as e:
        load_examples(path)
    assert fragment.replace(":1:", ":2:") in e.value.message and "write the answer" in e.value.fix
    # Evaluation prompts and the data analysis take the same row as an empty answer.
    assert load_examples(path, require_answer=False)[1].reference.strip() == ""


def test_csv_with_a_quote_left_open_names_the_row(tmp_path):
    path = write(tmp_path, 'instruction,output\na,b\n"c,d\ne,f\n', "d.csv")
    with pytest.raises(KieloError) as e:
        load_examples(path)
    assert "d.csv:3: the row ends before field(s) output" in e.value.message and "close the quote" in e.value.fix
    with pytest.raises(KieloError, match="d.csv:2: 3 fields, the header has 2"):
        load_examples(write(tmp_path, "instruction,output\na,b,c\n", "d.csv"))
    # A quoted field over several lines: the next record's line number is still its own.
    with pytest.raises(KieloError, match="d.csv:4: "):
        load_examples(write(tmp_path, 'instruction,output\n"a\nb",c\nd,""\n', "d.csv"))


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv"])
def test_byte_order_mark_is_read_and_bad_utf8_names_the_line(tmp_path, name):
    rows = [{"instruction": "ä", "output": "ö"}, {"instruction": "å", "output": "é"}]
    text = {
        "d.jsonl": "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
        "d.json": json.dumps(rows, ensure_ascii=False, indent=0),
        "d.csv": "instruction,output\nä,ö\nå,é\n",
    }[name]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert [e.reference for e in load_examples(path)] == ["ö", "é"]
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(KieloError) as e:
        load_examples(path)
    line = text[: text.index("ä")].count("\n") + 1
    assert f"{name}:{line}: not valid UTF-8" in e.value.message and "UTF-8" in e.value.fix


def test_template_that_drops_the_answer_is_an_error(tiny_gemma):
    tok = load_tokenizer(str(tiny_gemma))
    template = resolve_template(tok, "builtin")
    template.chat_template = template.chat_template.replace("{{ message['content'] }}{{ eos_token }}", "{{ eos_token }}")
    example = Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], source="d.jsonl:7")
    with pytest.raises(KieloError, match="d.jsonl:7: the prompt template renders answer 1 as empty"):
        Encoder(tok, template, max_length=64).encode(example)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(KieloError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(KieloError, match="unsupported file type"):
        load_examples(write(tmp_path, "x", "d.txt"))


def test_json_and_csv(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}]
    assert load_examples(write(tmp_path, json.dumps(rows), "d.json"))[0].reference == "b"
    assert load_examples(write(tmp_path, "instruction,input,output\na,,b\n", "d.csv"))[0].reference == "b"


@pytest.fixture(params=["builtin", "chat"])
def encoder(request, tiny_gemma):
    tok = load_tokenizer(str(tiny_gemma))
    return Encoder(tok, resolve_template(tok, request.param), max_length=128)


def test_labels_mask_prompt_and_train_answer_with_end_token(encoder, data_file):
    tok = encoder.tokenizer
    for ex in load_examples(data_file)[:6]:
        enc = encoder.encode(ex)
        trained = [i for i, x in enumerate(enc.labels) if x != IGNORE]
        assert trained, "something is trained"
        # Labels equal the inputs where trained, and the prompt (everything before the first answer) is masked.
        assert all(enc.labels[i] == enc.input_ids[i] for i in trained)
        assert all(x == IGNORE for x in enc.labels[: enc.prompt_tokens])
        # The end token is trained after every answer.
        n_answers = sum(m["role"] == "assistant" for m in ex.messages)
        assert sum(enc.input_ids[i] == encoder.template.end_token_id for i in trained) == n_answers
        assert enc.ends_with_end_token
        # The prompt tokens are exactly what inference feeds the model.
        assert (
            enc.input_ids[: enc.prompt_tokens] == encoder.prompt_ids(ex.prompt_messages[: len(ex.messages) - 1])[: enc.prompt_tokens]
            or n_answers > 1
        )
        # Answer text decodes back.
        answer = tok.decode([enc.input_ids[i] for i in trained], skip_special_tokens=True)
        assert ex.messages[-1]["content"] in answer
        assert enc.input_ids.count(tok.bos_token_id) == 1


def test_single_turn_prompt_matches_inference_prompt(encoder, data_file):
    ex = load_examples(data_file)[0]
    enc = encoder.encode(ex)
    assert enc.input_ids[: enc.prompt_tokens] == encoder.prompt_ids(ex.prompt_messages)


def test_chat_template_end_token_is_end_of_turn(tiny_gemma):
    tok = load_tokenizer(str(tiny_gemma))
    assert resolve_template(tok, "chat").end_token == "<end_of_turn>"
    assert resolve_template(tok, "builtin").end_token == "<eos>"
    assert resolve_template(tok, "auto").name == "chat"


def test_no_double_bos_when_template_and_tokenizer_both_add_it(tiny_gemma):
    tok = load_tokenizer(str(tiny_gemma))
    template = resolve_template(tok, "builtin")
    template.chat_template = "{{ bos_token }}" + template.chat_template  # a template that adds BOS twice
    enc = Encoder(tok, template, 128).encode(Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))
    assert enc.double_bos and enc.input_ids[:2].count(tok.bos_token_id) == 1


def test_train_on_prompt_trains_everything_but_first(tiny_gemma, data_file):
    tok = load_tokenizer(str(tiny_gemma))
    enc = Encoder(tok, resolve_template(tok, "builtin"), 128, train_on_prompt=True).encode(load_examples(data_file)[0])
    assert enc.labels == enc.input_ids


def test_truncate_and_drop_are_counted(tiny_gemma, tmp_path):
    tok = load_tokenizer(str(tiny_gemma))
    long = {"instruction": "a " * 5, "output": "b " * 60}
    short = {"instruction": "a", "output": "b"}
    prompt_only_fits = {"instruction": "a " * 60, "output": "b"}
    path = write(tmp_path, "\n".join(json.dumps(r) for r in (long, short, prompt_only_fits)))
    examples = load_examples(path)
    kept, st = Encoder(tok, resolve_template(tok, "builtin"), 48, "truncate").encode_all(examples)
    assert [len(k.input_ids) <= 48 for k in kept] == [True, True]
    assert st.truncated == 1 and st.dropped_no_target == 1 and st.tokens_lost > 0
    assert not kept[0].ends_with_end_token
    kept, st = Encoder(tok, resolve_template(tok, "builtin"), 48, "drop").encode_all(examples)
    assert len(kept) == 1 and st.dropped_overlong == 2


def test_padding_labels_are_ignored(tiny_gemma, data_file):
    tok = load_tokenizer(str(tiny_gemma))
    enc = Encoder(tok, resolve_template(tok, "builtin"), 128)
    items = [enc.encode(e, i) for i, e in enumerate(load_examples(data_file)[:3])]
    b = collate_padded(items, tok.pad_token_id)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        assert b.labels[row, n:].eq(IGNORE).all() and b.attention_mask[row, n:].eq(0).all()
        assert b.labels[row, :n].tolist() == it.labels
    assert b.real_tokens == sum(len(i.input_ids) for i in items)


def test_plan_is_deterministic_and_covers_every_example(tiny_gemma, data_file):
    tok = load_tokenizer(str(tiny_gemma))
    enc = Encoder(tok, resolve_template(tok, "builtin"), 128)
    items = [enc.encode(e, i) for i, e in enumerate(load_examples(data_file))]
    for packing in (False, True):
        a = BatchLayout(items, 2, tok.pad_token_id, seed=3, packing=packing, max_length=128)
        b = BatchLayout(items, 2, tok.pad_token_id, seed=3, packing=packing, max_length=128)
        seen = sorted(i for k in range(a.per_epoch) for i in a.batch(k).indices)
        assert seen == list(range(len(items)))
        assert [a.batch(k).indices for k in range(5)] == [b.batch(k).indices for k in range(5)]


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gemma"])
def test_packing_isolates_examples(request, model_fixture, data_file):
    """Logits of an example inside a packed row equal its logits alone: no example sees another.

    use_cache=False as in training: transformers derives the packed mask only when no cache is passed.
    """
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(model_fixture)
    tok = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = Encoder(tok, resolve_template(tok, "builtin"), 256)
    items = [enc.encode(e, i) for i, e in enumerate(load_examples(data_file)[:4])]
    packed = collate_packed([items], tok.pad_token_id)
    with torch.no_grad():
        logits = model(**packed.model_inputs(), use_cache=False).logits[0]
        at = 0
        for it in items:
            alone = model(input_ids=torch.tensor([it.input_ids])).logits[0]
            n = len(it.input_ids)
            torch.testing.assert_close(logits[at : at + n], alone, atol=1e-4, rtol=1e-4)
            at += n
    # And the check can fail: without restarting positions, later examples see earlier ones.
    with torch.no_grad():
        leaky = model(input_ids=packed.input_ids, use_cache=False).logits[0]
    n0 = len(items[0].input_ids)
    assert not torch.allclose(leaky[n0 : n0 + len(items[1].input_ids)], logits[n0 : n0 + len(items[1].input_ids)], atol=1e-4)
