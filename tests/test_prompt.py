"""`kielo prompt`: prompt sources, side-by-side answers, generation settings, suites and their checks."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from kielo.cli import main
from kielo.config.load import load_config
from kielo.config.schema import GenerationConfig
from kielo.errors import KieloError
from kielo.infer.generate import Generation, cut_at_stop
from kielo.prompt.run import SHIPPED_SUITE, Answer, PromptRun, load_models, run_prompts, suite_pass_rates
from kielo.prompt.settings import resolve_generation, with_values
from kielo.prompt.sources import Prompt, from_arguments, read_prompt_file
from kielo.prompt.stream import _held_back, stream_answer
from kielo.prompt.suite import EXPECTATIONS, Expectations, check, load_suite, parse_suite
from kielo.report import Table, markdown, text
from kielo.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quantization.bits", "0", "--max_new_tokens", "6"]  # unquantized tiny models generate fastest on CPU


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory) -> Path:
    """A tiny trained run folder whose saved config carries generation defaults."""
    tmp = tmp_path_factory.mktemp("adapter")
    data = tmp / "train.jsonl"
    from conftest import ROWS

    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS * 4) + "\n", encoding="utf-8")
    out = tmp / "run"
    train(tiny_config(tiny_llama, data, out, quantization={"bits": 0}, generation={"max_new_tokens": 5, "top_k": 7}), progress=False)
    return out


@pytest.fixture(scope="module")
def llama(tiny_llama):
    """The tiny base model loaded once, unquantized."""
    return load_models(load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0}))


def _gen(**kw) -> GenerationConfig:
    return with_values(GenerationConfig(), kw)


# --- prompt sources -------------------------------------------------------------------------------


def test_prompts_from_text_yaml_and_jsonl_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("Ensimmäinen kysymys?\n\nToinen,\nkahdella rivillä.\n\n\nKolmas.\n", encoding="utf-8")
    assert [p.text for p in read_prompt_file(txt)] == ["Ensimmäinen kysymys?", "Toinen,\nkahdella rivillä.", "Kolmas."]
    lines = tmp_path / "lines.txt"
    lines.write_text("Yksi\nKaksi\nKolme\n", encoding="utf-8")
    assert [p.text for p in read_prompt_file(lines)] == ["Yksi", "Kaksi", "Kolme"]

    yml = tmp_path / "p.yaml"
    yml.write_text(
        yaml.safe_dump(
            {
                "prompts": [
                    "Pelkkä teksti",
                    {"id": "tr", "prompt": "Käännä englanniksi.", "input": "Hyvää huomenta!", "system": "Vastaa lyhyesti."},
                    {
                        "messages": [
                            {"role": "user", "content": "Paljonko on 2 + 3?"},
                            {"role": "assistant", "content": "5"},
                            {"role": "user", "content": "Entä 4 * 3?"},
                        ]
                    },
                ]
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    a, b, c = read_prompt_file(yml)
    assert (a.id, a.text) == ("1", "Pelkkä teksti")
    assert b.id == "tr" and b.text == "Käännä englanniksi.\n\nHyvää huomenta!" and b.messages[0]["role"] == "system"
    assert b.conversation("toinen järjestelmäkehote")[0]["content"] == "Vastaa lyhyesti."  # its own system prompt wins
    assert len(c.messages) == 3 and c.conversation("Ole ystävällinen.")[0] == {"role": "system", "content": "Ole ystävällinen."}

    jsonl = tmp_path / "p.jsonl"
    rows = [
        '"Pelkkä merkkijono"',
        {"prompt": "Kysymys?", "id": "q"},
        {"id": "data-1", "task": "x", "instruction": "Käännä.", "input": "Kissa", "output": "Cat"},
        {"messages": [{"role": "user", "content": "Hei"}, {"role": "assistant", "content": "Moi"}]},
    ]
    jsonl.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    got = read_prompt_file(jsonl)
    assert [p.id for p in got] == ["1", "q", "data-1", "4"]
    assert [p.text for p in got] == ["Pelkkä merkkijono", "Kysymys?", "Käännä.\n\nKissa", "Hei"]
    assert got[3].messages == [{"role": "user", "content": "Hei"}]  # the reference answer is not part of the prompt
    # kielo's own data files are prompt files as they are.
    assert len(read_prompt_file(REPO / "data" / "fi_instruct" / "dev.jsonl")) > 50


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "bad.jsonl:2: malformed JSON"),
        ("bad.jsonl", '{"text": "a"}\n', "bad.jsonl:1: no `prompt`, `instruction` or `messages`"),
        ("bad.yaml", "prompts:\n  - {promt: hei}\n", "unknown key `promt`"),
        ("bad.yaml", "prompts:\n  - id: a\n    prompt: x\n  - id: a\n    prompt: y\n", "prompt id `a` is used twice"),
        ("bad.yaml", "prompts: []\n", "holds no prompts"),
        ("bad.yaml", "prompts:\n  - prompt: [1, 2]\n", "`prompt` must be text"),
        ("bad.yaml", "prompts:\n  - messages: [{role: assistant, content: x}]\n", "does not end with a user message"),
        ("bad.csv", "a,b\n", "unsupported prompt file type .csv"),
    ],
)
def test_bad_prompt_files_name_the_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KieloError, match=re.escape(message)):
        read_prompt_file(path)


# --- generation ----------------------------------------------------------------------------------


def test_prompt_from_the_command_line(tiny_llama, tmp_path, capsys):
    code = main(["prompt", "--model", str(tiny_llama), "Mikä on Suomen pääkaupunki?", *FAST, "--output_dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["model"] == "base" and 0 < rows[0]["tokens"] <= 6
    assert rows[0]["messages"] == [{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}]
    assert out.out.strip() == rows[0]["answer"].strip()  # a lone answer is printed as plain text
    saved = yaml.safe_load((tmp_path / "kielo_config.yaml").read_text())
    assert saved["generation"]["max_new_tokens"] == 6


def test_adapter_alone_uses_its_runs_base_and_calls_never_overwrite(tiny_llama, adapter, tmp_path, capsys, caplog):
    """Without --model, a run folder's saved config names the base; a second call writes prompts-2.*."""
    argv = ["prompt", "--adapter", str(adapter), "Mikä on Suomen pääkaupunki?", *FAST, "--output_dir", str(tmp_path)]
    with caplog.at_level(logging.INFO, logger="kielo"):
        assert main(argv) == 0, capsys.readouterr().err
    assert f"base model from the training run {adapter}: {tiny_llama}" in caplog.text
    first = (tmp_path / "prompts.jsonl").read_bytes()
    assert [r["model"] for r in map(json.loads, first.decode().splitlines())] == ["base", "run"]
    capsys.readouterr()
    assert main(argv) == 0
    assert f"written: {tmp_path / 'prompts-2.jsonl'}, {tmp_path / 'prompts-2.md'}" in capsys.readouterr().err
    assert (tmp_path / "prompts.jsonl").read_bytes() == first and (tmp_path / "prompts-2.md").is_file()


def test_no_prompt_or_two_sources_is_a_clear_error(tiny_llama, adapter, capsys):
    assert main(["prompt", "--model", str(tiny_llama)]) == 2
    assert "give exactly one of" in capsys.readouterr().err
    assert main(["prompt", "--model", str(tiny_llama), "hei", "--suite", str(SHIPPED_SUITE)]) == 2
    assert main(["prompt", "--model", str(adapter), "hei", "--output_dir", str(adapter)]) == 2  # would overwrite its config
    assert "is a training run folder" in capsys.readouterr().err


def test_side_by_side_base_and_adapter(tiny_llama, adapter, tmp_path, capsys):
    prompts = tmp_path / "kysymykset.yaml"
    prompts.write_text("- id: capital\n  prompt: Mikä on Suomen pääkaupunki?\n- Kirjoita lyhyt runo.\n", encoding="utf-8")
    code = main(
        [
            "prompt",
            "--model",
            str(tiny_llama),
            "--adapter",
            str(adapter),
            "--file",
            str(prompts),
            *FAST,
            "--output_dir",
            str(tmp_path / "out"),
            "--system",
            "Vastaa lyhyesti.",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    header = out.splitlines()[0]
    assert re.match(r"prompt\s+│ base\s+│ run$", header), header
    assert "[capital] Mikä on Suomen" in out
    rows = [json.loads(x) for x in (tmp_path / "out" / "kysymykset.jsonl").read_text().splitlines()]
    assert [(r["id"], r["model"]) for r in rows] == [("capital", "base"), ("capital", "run"), ("2", "base"), ("2", "run")]
    assert rows[0]["messages"][0] == {"role": "system", "content": "Vastaa lyhyesti."}
    md = (tmp_path / "out" / "kysymykset.md").read_text()
    assert "| prompt | base | run |" in md and "| [capital] Mikä on Suomen pääkaupunki? |" in md
    assert "Settings: greedy, max_new_tokens=6" in md


def test_generation_defaults_come_from_the_training_run(adapter, tiny_llama):
    configured = GenerationConfig()
    # The run saved max_new_tokens 5 and top_k 7: they replace the schema defaults ...
    g = resolve_generation(configured, [str(tiny_llama), str(adapter)], {})
    assert (g.max_new_tokens, g.top_k) == (5, 7)
    # ... a configured (non-default) value and a short flag override them, in that order.
    g = resolve_generation(with_values(configured, {"max_new_tokens": 9, "temperature": 0.5}), [str(adapter)], {"top_k": "3"})
    assert (g.max_new_tokens, g.temperature, g.top_k) == (9, 0.5, 3)
    assert resolve_generation(configured, [str(tiny_llama)], {}) == configured  # a plain base model brings none
    with pytest.raises(KieloError, match="generation.top_p"):
        resolve_generation(configured, [], {"top_p": "2"})


def test_sampling_is_seeded_per_prompt(llama):
    bundle, models = llama
    prompts = from_arguments(["Mikä on Suomen pääkaupunki?", "Kirjoita lyhyt runo.", "Hei"])
    g = _gen(temperature=1.0, top_k=50, seed=3, max_new_tokens=8)
    first = run_prompts(bundle, models, prompts, g)
    reordered = run_prompts(bundle, models, prompts[::-1], g)
    texts = [a.text for a in first.answers["base"]]
    assert texts == [a.text for a in reordered.answers["base"]][::-1]  # an answer doesn't depend on the other prompts
    other_seed = run_prompts(bundle, models, prompts, with_values(g, {"seed": 4}))
    assert texts != [a.text for a in other_seed.answers["base"]]


def test_stop_strings_cut_batch_and_streamed_answers(llama):
    bundle, models = llama
    prompts = from_arguments(["Mikä on Suomen pääkaupunki?"])
    plain = run_prompts(bundle, models, prompts, _gen(max_new_tokens=24)).answers["base"][0]
    found = re.search(r"[A-Za-z]{3}", plain.text[1:])  # a stop string the random model really produces
    assert found, plain.text
    stop = found.group()
    cut = run_prompts(bundle, models, prompts, _gen(max_new_tokens=24, stop=[stop])).answers["base"][0]
    assert cut.stop == stop and stop not in cut.text and plain.text.startswith(cut.text)
    assert cut.tokens < plain.tokens and not cut.ended  # generation stopped early, and not at the end token
    pieces: list[str] = []
    streamed = stream_answer(bundle, prompts[0].conversation(), _gen(max_new_tokens=24, stop=[stop]), pieces.append)
    assert streamed.text == cut.text and "".join(pieces).strip() == cut.text  # the stop string is never shown
    unstopped: list[str] = []
    assert stream_answer(bundle, prompts[0].conversation(), _gen(max_new_tokens=24), unstopped.append).text == plain.text
    assert "".join(unstopped).strip() == plain.text


def test_stop_string_helpers():
    assert cut_at_stop("vastaus ### lisää ## x", ["##", "###"]) == ("vastaus ", "###")  # earliest position wins
    assert cut_at_stop("ei mitään", ["###"]) == ("ei mitään", None)
    assert _held_back("tekstiä #", ["###"]) == 1 and _held_back("tekstiä ##", ["###"]) == 2
    assert _held_back("tekstiä", ["###"]) == 0 and _held_back("rikki\ufffd", []) == 1
    assert load_config(overrides={"generation.stop": "###"}).generation.stop == ["###"]
    with pytest.raises(KieloError, match="generation.stop"):
        GenerationConfig(stop=[""])


# --- suites --------------------------------------------------------------------------------------


def _answer(text: str, ended: bool = True, stop: str | None = None) -> Generation:
    return Generation(text, tokens=12, ended=ended, stop=stop)


@pytest.mark.parametrize(
    "expect, good, bad, detail",
    [
        (
            {"contains": ["Helsinki", "pääkaupunki"]},
            "Suomen PÄÄKAUPUNKI on helsinki.",
            "Suomen pääkaupunki on Turku.",
            "missing 'Helsinki'",
        ),
        ({"not_contains": "negatiivinen"}, "positiivinen", "Negatiivinen", "contains 'negatiivinen'"),
        ({"regex": r"Vastaus:\s*42\b"}, "6 · 7 = 42. Vastaus: 42 €.", "Vastaus: 420", r"no match for /Vastaus:\s*42\b/"),
        ({"max_length": 10}, "Helsinki.", "Helsinki on Suomen pääkaupunki.", "31 > 10 characters"),
        ({"language": "fi"}, "Suomen pääkaupunki on Helsinki.", "The capital of Finland is Helsinki.", "answered in en, expected fi"),
        ({"language": "en"}, "The train is ten minutes late.", "Juna on kymmenen minuuttia myöhässä.", "expected en"),
        ({"json": True}, '```json\n{"nimi": "Liisa", "ikä": 34}\n```', "{nimi: Liisa}", "not JSON"),
    ],
)
def test_every_expectation_passes_and_fails(expect, good, bad, detail):
    suite = parse_suite({"prompts": [{"id": "x", "prompt": "?", "expect": expect}]}, "s.yaml")
    e = suite.cases[0].expect
    (ok,) = check(e, _answer(good))
    assert ok.passed and ok.name == next(iter(expect)), ok
    (failed,) = check(e, _answer(bad))
    assert not failed.passed and detail in failed.detail, failed


def test_end_token_expectation_and_neutral_answers():
    e = Expectations(ends_with_end_token=True, language="fi")
    assert all(c.passed for c in check(e, _answer("366")))  # numbers are language-neutral
    cut = check(e, _answer("Suomen pääkaupunki on", ended=False))
    assert [c.name for c in cut if not c.passed] == ["ends_with_end_token"] and "max_new_tokens" in cut[-1].detail
    stopped = check(e, _answer("Helsinki", ended=False, stop="###"))
    assert "stop string '###'" in stopped[-1].detail
    assert check(Expectations(), _answer("mitä tahansa")) == []


def test_defaults_apply_and_can_be_turned_off():
    suite = parse_suite(
        {
            "defaults": {"language": "fi", "max_length": 50, "ends_with_end_token": True},
            "prompts": [{"id": "a", "prompt": "?"}, {"id": "b", "prompt": "?", "expect": {"language": None, "max_length": 5}}],
        },
        "s.yaml",
    )
    a, b = (c.expect for c in suite.cases)
    assert a.active() == ["max_length", "language", "ends_with_end_token"] and a.max_length == 50
    assert b.active() == ["max_length", "ends_with_end_token"] and b.max_length == 5


@pytest.mark.parametrize(
    "prompt, message",
    [
        (
            {"id": "capital", "prompt": "?", "expect": {"contain": "Helsinki"}},
            "prompt 1 (id `capital`): expect.contain is not an expectation",
        ),
        (
            {"id": "capital", "prompt": "?", "expect": {"regex": "([a-z"}},
            "prompt 1 (id `capital`): expect.regex: the regular expression '([a-z' does not compile",
        ),
        (
            {"id": "capital", "prompt": "?", "expect": {"max_length": "ten"}},
            "prompt 1 (id `capital`): expect.max_length must be a positive whole number",
        ),
        (
            {"id": "capital", "prompt": "?", "expect": {"contains": ["Helsinki", 3]}},
            "prompt 1 (id `capital`): expect.contains must be a text or a list",
        ),
        (
            {"id": "capital", "prompt": "?", "expect": {"language": "finnish"}},
            "prompt 1 (id `capital`): expect.language = 'finnish' is not a language",
        ),
        ({"id": "capital", "prompt": "?", "expect": {"json": "yes"}}, "expect.json must be true or false"),
        ({"id": "capital", "prompt": "?", "expect": ["Helsinki"]}, "expect must be a mapping of expectations"),
        ({"id": "capital", "expect": {}}, "prompt 1 (id `capital`): the prompt has no text"),
        ({"id": "capital", "promt": "?"}, "prompt 1: unknown key `promt`"),
    ],
)
def test_malformed_suite_names_the_prompt_and_field(prompt, message):
    with pytest.raises(KieloError, match=re.escape(message)) as err:
        parse_suite({"prompts": [prompt]}, "s.yaml")
    if prompt.get("expect") == {"contain": "Helsinki"}:
        assert "did you mean `contains`?" in err.value.fix
    if "promt" in prompt:
        assert "did you mean `prompt`?" in err.value.fix


def test_malformed_suite_top_level():
    with pytest.raises(KieloError, match=r"s.yaml: defaults.max_len is not an expectation"):
        parse_suite({"defaults": {"max_len": 3}, "prompts": ["?"]}, "s.yaml")
    with pytest.raises(KieloError, match="unknown top-level key `prompt`"):
        parse_suite({"prompt": ["?"], "prompts": ["?"]}, "s.yaml")
    with pytest.raises(KieloError, match="a suite is a mapping with a `prompts:` list"):
        parse_suite(["?"], "s.yaml")


def test_bad_suite_on_the_command_line_fails_before_loading_a_model(tmp_path, capsys):
    suite = tmp_path / "bad.yaml"
    suite.write_text("prompts:\n  - id: capital\n    prompt: Mikä on Suomen pääkaupunki?\n    expect: {regx: Helsinki}\n")
    assert main(["prompt", "--model", str(tmp_path / "no-such-model"), "--suite", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "prompt 1 (id `capital`): expect.regx is not an expectation" in err and "did you mean `regex`?" in err
    assert "Traceback" not in err


def test_pass_rates_and_the_last_model_decides():
    p = [Prompt("a", [{"role": "user", "content": "?"}]), Prompt("b", [{"role": "user", "content": "?"}])]
    from kielo.prompt.suite import Check

    def answers(model, results):
        return [Answer(q, model, "x", 1, True, checks=[Check("contains", r)]) for q, r in zip(p, results, strict=True)]

    run = PromptRun(
        ["base", "tuned"], p, {"base": answers("base", [False, False]), "tuned": answers("tuned", [True, True])}, GenerationConfig()
    )
    assert run.pass_rates() == {"base": 0.0, "tuned": 1.0}
    assert run.all_passed() and not run.all_passed("base")


def _write_suite(path: Path, expect: dict) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": path.stem,
                "prompts": [
                    {"id": "capital", "prompt": "Mikä on Suomen pääkaupunki?", "expect": expect},
                    {"id": "poem", "prompt": "Kirjoita lyhyt runo.", "expect": {"max_length": 10000}},
                ],
            },
            allow_unicode=True,
        )
    )
    return path


def test_suite_exit_code_follows_the_last_model(tiny_llama, adapter, tmp_path, capsys):
    common = ["--model", str(tiny_llama), "--adapter", str(adapter), *FAST, "--output_dir", str(tmp_path / "out")]
    passing = _write_suite(tmp_path / "passing.yaml", {"max_length": 10000})
    assert main(["prompt", "--suite", str(passing), *common]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^base\s+2/2\s+100%", out, re.M) and re.search(r"^run\s+2/2\s+100%", out, re.M), out
    assert "PASS: run passed 2/2 prompts of passing" in out

    failing = _write_suite(tmp_path / "failing.yaml", {"contains": "Tukholma", "max_length": 10000})
    assert main(["prompt", "--suite", str(failing), *common]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^run\s+1/2\s+50%\s+contains ×1", out, re.M), out
    assert "✗ contains: missing 'Tukholma'" in out and "FAIL: run passed 1/2" in out
    rows = [json.loads(x) for x in (tmp_path / "out" / "failing.jsonl").read_text().splitlines()]
    capital = [r for r in rows if r["id"] == "capital"]
    assert [r["passed"] for r in capital] == [False, False] and capital[0]["checks"][0]["name"] == "contains"
    md = (tmp_path / "out" / "failing.md").read_text()
    assert "## Summary" in md and "| run | 1/2 | 50% | contains ×1 |" in md
    # The demo's way: pass rates per model, no exit code.
    config = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0, "generation.max_new_tokens": 4})
    assert suite_pass_rates(config, [str(adapter)], failing) == {"base": 0.5, "run": 0.5}


# --- the shipped suite ---------------------------------------------------------------------------


def test_shipped_suite_is_valid_and_covers_every_expectation():
    suite = load_suite(SHIPPED_SUITE)
    assert 24 <= len(suite.cases) <= 30
    used = {k for c in suite.cases for k in c.expect.active()}
    assert used == set(EXPECTATIONS)
    assert {c.expect.language for c in suite.cases} >= {"fi", "en"}


def _five_grams(text: str) -> set[str]:
    text = re.sub(r"\s+", " ", text.casefold()).strip()
    return {text[i : i + 5] for i in range(max(len(text) - 4, 1))}


def test_shipped_suite_does_not_overlap_the_bundled_data():
    rows = []
    for path in sorted((REPO / "data").glob("**/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "messages" not in row and "instruction" not in row:
                continue  # cached generations and conversational preference pairs: their prompts are rows elsewhere
            if "messages" in row:
                text = "\n\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
            else:
                text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            rows.append((row.get("id"), _five_grams(text)))
    assert len(rows) > 700
    for case in load_suite(SHIPPED_SUITE).cases:
        grams = _five_grams(case.prompt.text)
        worst = max(rows, key=lambda r: len(grams & r[1]) / len(grams | r[1]))
        jaccard = len(grams & worst[1]) / len(grams | worst[1])
        assert jaccard < 0.5, f"{case.prompt.id} is a near duplicate of {worst[0]} (5-gram Jaccard {jaccard:.2f})"


# --- tables --------------------------------------------------------------------------------------


def test_terminal_and_markdown_tables():
    table = text.wrapped_table(Table(["prompt", "base", "run"], [["[1] Kysymys", "pitkä vastaus " * 6, "rivi 1\nrivi 2"]]), width=60)
    lines = table.splitlines()
    assert all(len(line) <= 60 for line in lines) and lines[0].startswith("prompt")
    assert len(lines) >= 4 and "rivi 2" in table and "─┼─" in lines[1]
    md = markdown.table(Table(["prompt", "base"], [["a | b", "rivi 1\nrivi 2"]]))
    assert md.splitlines() == ["| prompt | base |", "|---|---|", "| a \\| b | rivi 1<br>rivi 2 |"]


def test_stop_strings_work_when_transformers_criteria_cannot_be_built(llama, monkeypatch):
    """A tokenizer whose vocabulary StopStringCriteria can't index still stops at stop strings (decoded check)."""
    bundle, models = llama
    prompts = from_arguments(["Mikä on Suomen pääkaupunki?"])
    plain = run_prompts(bundle, models, prompts, _gen(max_new_tokens=24)).answers["base"][0]
    found = re.search(r"[A-Za-z]{3}", plain.text[1:])
    assert found, plain.text
    stop = found.group()
    expected = run_prompts(bundle, models, prompts, _gen(max_new_tokens=24, stop=[stop])).answers["base"][0]

    def broken_vocab():
        raise IndexError("vocabulary with holes")

    monkeypatch.setattr(bundle.tokenizer, "get_vocab", broken_vocab)
    with pytest.raises(IndexError):
        from transformers import StopStringCriteria

        StopStringCriteria(bundle.tokenizer, [stop])  # the case: transformers' criteria fails for this tokenizer
    cut = run_prompts(bundle, models, prompts, _gen(max_new_tokens=24, stop=[stop])).answers["base"][0]
    assert (cut.text, cut.stop, cut.tokens) == (expected.text, expected.stop, expected.tokens)
    assert cut.tokens < plain.tokens and not cut.ended
    streamed = stream_answer(bundle, prompts[0].conversation(), _gen(max_new_tokens=24, stop=[stop]), lambda piece: None)
    assert streamed.text == cut.text
