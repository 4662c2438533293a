"""The bundled Finnish preference pairs (data/fi_prefs): built from the instruction splits without mixing them,
every pair valid, every kind of rejection what its label says, and the files what data/build_prefs.py builds."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from kielo.lang import detect_language

ROOT = Path(__file__).resolve().parents[1]
PREFS = ROOT / "data" / "fi_prefs"
SOURCE = ROOT / "data" / "fi_instruct"
SPLITS = ("train", "dev", "test")
KINDS = {"no_end", "repeats_prompt", "wrong_language", "wrong_fact"}
SOURCES = {"base_generation", "constructed"}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


PAIRS = {s: _read(PREFS / f"{s}.jsonl") for s in SPLITS}
ROWS = {s: {r["id"]: r for r in _read(SOURCE / f"{s}.jsonl")} for s in SPLITS}


def _builder():
    # data/ is not a package: the builder is loaded from its file, as test_dataset loads build_splits.
    spec = importlib.util.spec_from_file_location("build_prefs", ROOT / "data" / "build_prefs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILD = _builder()
GENERATIONS = {g["id"]: g for g in _read(ROOT / "data" / "base_generations.jsonl")}


def _text(answer) -> str:
    """A chosen or rejected answer as text: a string, or (conversational rows) one assistant message."""
    if isinstance(answer, list):
        assert len(answer) == 1 and answer[0]["role"] == "assistant", answer
        return answer[0]["content"]
    return answer


def _vastaus(text: str) -> int | None:
    m = re.search(r"Vastaus:\s*([−-]?[\d ]*\d)", text)
    return int(m.group(1).replace(" ", "").replace("−", "-")) if m else None


def problems(pair: dict, row: dict) -> list[str]:
    """What is wrong with one pair given its source row (empty when nothing is)."""
    found = []
    chosen, rejected = _text(pair["chosen"]), _text(pair["rejected"])
    if not chosen.strip() or not rejected.strip():
        found.append("empty answer")
    if chosen.strip() == rejected.strip():
        found.append("chosen equals rejected")
    if pair["rejected_kind"] not in KINDS or pair["rejected_source"] not in SOURCES:
        found.append(f"unknown kind or source {pair['rejected_kind']}/{pair['rejected_source']}")
    if (pair["task"], pair["answer_lang"]) != (row["task"], row["answer_lang"]):
        found.append("task or answer_lang differs from the source row")
    if "messages" in row:
        if pair["prompt"] != row["messages"][:-1] or chosen != row["messages"][-1]["content"]:
            found.append("prompt or chosen is not the source dialogue's")
    elif (pair["instruction"], pair["input"], chosen) != (row["instruction"], row.get("input", ""), row["output"]):
        found.append("instruction, input or chosen is not the source row's")
    kind = pair["rejected_kind"]
    if kind == "wrong_language" and detect_language(rejected) in (row["answer_lang"], "neutral"):
        found.append(f"wrong_language rejection detected as {detect_language(rejected)}")
    if kind == "wrong_fact" and row["task"] == "arithmetic":
        wrong = _vastaus(rejected)
        if wrong is None or wrong == row["answer"] or wrong not in BUILD.wrong_results(row["expression"], row["answer"]):
            found.append(f"arithmetic rejection's answer {wrong} is not a wrong result of {row['expression']}")
    if kind == "wrong_fact" and row["task"] == "classification" and (rejected.lower() not in row["labels"] or rejected == chosen):
        found.append("classification rejection is not another label")
    if (
        kind == "no_end"
        and pair["rejected_source"] == "constructed"
        and not (rejected.startswith(chosen) and len(rejected) > len(chosen))
    ):
        found.append("constructed no_end rejection does not run on past the reference")
    if pair["rejected_source"] == "base_generation":
        gen = GENERATIONS.get(pair["id"])
        if gen is None or gen["text"] != rejected:
            found.append("rejection is not the cached base-model generation")
        elif kind == "no_end" and gen["ended"]:
            found.append("no_end generation ended")
        elif kind == "repeats_prompt" and not BUILD.repeats_prompt(rejected, BUILD.prompt_text(row)):
            found.append("repeats_prompt generation does not restate the prompt")
    return found


def test_every_pair_is_valid():
    bad = {p["id"]: problems(p, ROWS[s][p["id"]]) for s in SPLITS for p in PAIRS[s]}
    assert not {k: v for k, v in bad.items() if v}


def test_the_checks_catch_broken_pairs():
    """Each check above fails on a pair broken the way it looks for."""
    by_kind = {(p["task"], p["rejected_kind"]): p for p in PAIRS["train"]}

    def broken(task, kind, **change):
        pair = {**by_kind[(task, kind)], **change}
        return problems(pair, ROWS["train"][pair["id"]])

    arith = by_kind[("arithmetic", "wrong_fact")]
    row = ROWS["train"][arith["id"]]
    assert any("arithmetic" in p for p in broken("arithmetic", "wrong_fact", rejected=row["output"] + " "))
    off = re.sub(r"Vastaus:\s*\S+", f"Vastaus: {row['answer'] + 987}", arith["rejected"])  # wrong, but by no slip of the expression
    assert any("arithmetic" in p for p in broken("arithmetic", "wrong_fact", rejected=off))
    assert "chosen equals rejected" in broken("arithmetic", "wrong_fact", rejected=arith["chosen"])
    en = by_kind[("translation_fi_en", "wrong_language")]
    assert any(
        "wrong_language" in p for p in broken("translation_fi_en", "wrong_language", rejected=en["chosen"] + " Thank you very much.")
    )
    assert any("empty" in p for p in broken("open_qa", "wrong_fact", rejected=" "))
    assert any("unknown kind" in p for p in broken("open_qa", "wrong_fact", rejected_kind="bad_vibes"))
    assert any("not the source row" in p for p in broken("open_qa", "wrong_fact", chosen="Jotain muuta."))
    gen = next(p for p in PAIRS["train"] if p["rejected_source"] == "base_generation" and isinstance(p["rejected"], str))
    assert any("cached" in p for p in problems({**gen, "rejected": gen["rejected"] + "!"}, ROWS["train"][gen["id"]]))


def test_splits_come_from_their_own_source_split():
    """Train pairs from train rows only, dev from dev, test from test: no id or prompt in two splits."""
    for s in SPLITS:
        ids = [p["id"] for p in PAIRS[s]]
        assert len(ids) == len(set(ids)) and set(ids) <= set(ROWS[s]), s

    def prompts(s):
        return {json.dumps(p.get("prompt") or [p["instruction"], p["input"]], ensure_ascii=False) for p in PAIRS[s]}

    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not set(r["id"] for r in PAIRS[a]) & set(r["id"] for r in PAIRS[b])
        assert not prompts(a) & prompts(b), f"{a} and {b} share a prompt"


def test_sizes_and_mix_of_kinds():
    assert len(PAIRS["train"]) >= 600
    for s in ("train", "test"):
        assert set(Counter(p["rejected_kind"] for p in PAIRS[s])) == KINDS, s
    by_task: dict[str, set] = {}
    for p in PAIRS["train"]:
        by_task.setdefault(p["task"], set()).add(p["rejected_kind"])
    assert all(len(kinds) >= 2 for kinds in by_task.values()), by_task
    # Some of each split's rejections are the base model's own answers (the datasheet says how many).
    for s in SPLITS:
        assert sum(p["rejected_source"] == "base_generation" for p in PAIRS[s]) >= 5, s


def test_generated_rejections_come_from_the_base_model_settings():
    for g in GENERATIONS.values():
        assert g["model"] == "gemma-3-270m" and g["max_new_tokens"] == 96 and g["tokens"] <= 96


@pytest.mark.parametrize("split", SPLITS)
def test_the_build_reproduces_the_committed_files(split):
    assert BUILD.render(BUILD.build()[split]) == (PREFS / f"{split}.jsonl").read_text(encoding="utf-8"), (
        "data/fi_prefs is stale: run python data/build_prefs.py"
    )


def test_the_datasheet_counts_what_is_there():
    assert BUILD.count_table(PAIRS) in (ROOT / "data" / "DATA.md").read_text(encoding="utf-8"), (
        "the fi_prefs table in data/DATA.md is stale: paste what python data/build_prefs.py prints"
    )
