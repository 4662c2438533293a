"""The bundled Finnish instruction data: size, balance, correctness, spelling and no near duplicates."""

from __future__ import annotations

import ast
import importlib.util
import json
import operator
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "fi_instruct"
SPLITS = {
    name: [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    for name in ("train", "dev", "test")
}
ALL = [r for rows in SPLITS.values() for r in rows]
TASKS = {
    "open_qa",
    "explanation",
    "summarization",
    "rewrite",
    "grammar",
    "classification",
    "extraction",
    "list",
    "creative",
    "translation_en_fi",
    "translation_fi_en",
    "arithmetic",
    "format",
    "dialogue",
}


def answer(row) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["output"]


def text_of(row) -> str:
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"])
    return "\n".join((row["instruction"], row.get("input", ""), row["output"]))


def test_sizes_and_splits():
    assert len(SPLITS["train"]) >= 600 and len(SPLITS["test"]) >= 120 and len(SPLITS["dev"]) >= 60
    ids = [r["id"] for r in ALL]
    assert len(ids) == len(set(ids)), "an example is in two splits"
    spec = importlib.util.spec_from_file_location("build_splits", ROOT / "data" / "build_splits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build() == SPLITS, "data/fi_instruct is stale: run python data/build_splits.py"


def test_every_row_loads_with_kielo():
    from kielo.data.records import load_examples

    for name in SPLITS:
        assert len(load_examples(DATA / f"{name}.jsonl")) == len(SPLITS[name])


def test_task_balance_and_templates():
    counts = Counter(r["task"] for r in ALL)
    assert set(counts) == TASKS
    assert max(counts.values()) <= 0.15 * len(ALL)
    assert sum(r.get("templated", False) for r in ALL) <= 0.20 * len(ALL)
    for name, rows in SPLITS.items():
        assert {r["task"] for r in rows} == TASKS, f"{name} lacks a task type"
    assert all(r["answer_lang"] in ("fi", "en") for r in ALL)
    assert {r["answer_lang"] for r in ALL if r["task"] == "translation_fi_en"} == {"en"}


def test_responses_are_mostly_short():
    # ~3.3 characters per token for Finnish on Gemma 3: 400 characters is about 120 tokens.
    short = sum(len(answer(r)) <= 400 for r in ALL)
    assert short >= 0.9 * len(ALL)


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.USub: operator.neg,
}


def evaluate(expr: str) -> float:
    """Arithmetic only: numbers and + - * / // ( )."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {expr}")

    return ev(ast.parse(expr, mode="eval"))


def test_arithmetic_answers_are_computed_and_equal():
    rows = [r for r in ALL if r["task"] == "arithmetic"]
    assert rows
    for r in rows:
        assert evaluate(r["expression"]) == r["answer"], r["id"]
        m = re.search(r"Vastaus:\s*(-?\d+)", r["output"])
        assert m and int(m.group(1)) == r["answer"], r["id"]


def test_extracted_facts_appear_in_their_input_and_answer():
    rows = [r for r in ALL if r["task"] == "extraction"]
    assert rows
    for r in rows:
        assert r["facts"], r["id"]
        for fact in r["facts"]:
            assert fact in r["input"] and fact in r["output"], (r["id"], fact)


def test_labels_are_in_their_set():
    rows = [r for r in ALL if r["task"] == "classification"]
    assert rows
    for r in rows:
        assert r["output"] in r["labels"], r["id"]


def test_format_constraints_hold():
    rows = [r for r in ALL if r["task"] == "format"]
    assert {r["constraint"]["type"] for r in rows} == {"one_sentence", "bullets", "number_only"}
    for r in rows:
        c, out = r["constraint"], r["output"].strip()
        if c["type"] == "number_only":
            assert re.fullmatch(r"-?\d+", out), r["id"]
        elif c["type"] == "bullets":
            lines = out.splitlines()
            assert len(lines) == c["n"] and all(line.startswith("- ") for line in lines), r["id"]
        else:
            assert out[-1] in ".!?" and not re.search(r"[.!?]\s", out[:-1]), r["id"]


def finnish_fields(row) -> list[str]:
    if "messages" in row:
        return [m["content"] for m in row["messages"]]
    fields = [row["instruction"]]
    if row["answer_lang"] == "fi":
        fields.append(row["output"])
    # Grammar inputs contain the errors to correct on purpose; English sources are not Finnish.
    if row["task"] not in ("grammar", "translation_en_fi"):
        fields.append(row.get("input", ""))
    return fields


def voikko():
    sys.path.append("/usr/lib/python3/dist-packages")  # Debian's python3-libvoikko
    try:
        import libvoikko

        return libvoikko.Voikko("fi")
    except (ImportError, OSError) as e:
        pytest.skip(f"Voikko is not installed ({e}): apt-get install python3-libvoikko voikko-fi")
    finally:
        sys.path.remove("/usr/lib/python3/dist-packages")


def test_spelling_is_accepted_by_voikko():
    v = voikko()
    words = [w.strip("-") for r in ALL for f in finnish_fields(r) for w in re.findall(r"[A-Za-zÅÄÖåäö-]+", f)]
    words = [w for w in words if w]
    accepted = sum(v.spell(w) for w in words)
    assert accepted / len(words) >= 0.97, f"{accepted}/{len(words)}"


def shingles(text: str, n: int = 5) -> set[str]:
    t = re.sub(r"\s+", " ", text.lower())
    return {t[i : i + n] for i in range(max(1, len(t) - n + 1))}


def near_duplicates(a: list[tuple[str, str]], b: list[tuple[str, str]] | None = None, threshold: float = 0.5):
    """Pairs with character 5-gram Jaccard >= threshold (within ``a``, or between ``a`` and ``b``)."""
    sa = [(i, shingles(t)) for i, t in a]
    sb = sa if b is None else [(i, shingles(t)) for i, t in b]
    found = []
    for x, (ia, s1) in enumerate(sa):
        for iy, s2 in sb[x + 1 :] if b is None else sb:
            if len(s1 & s2) / len(s1 | s2) >= threshold:
                found.append((ia, iy))
    return found


def test_near_duplicate_check_can_fail():
    assert near_duplicates([("a", "Mikä on Suomen pääkaupunki?"), ("b", "Mikä on Suomen pääkaupunki??")])


def test_no_near_duplicates_within_or_across_splits():
    texts = [(r["id"], text_of(r)) for r in ALL]
    assert near_duplicates(texts) == []


def test_no_overlap_with_the_shipped_prompt_suite():
    import yaml

    suites = sorted((ROOT / "prompts").glob("*.yaml"))
    if not suites:
        pytest.skip("no prompt suite shipped yet")
    prompts = [
        (f"{s.name}:{p.get('id')}", p["prompt"])
        for s in suites
        for p in (yaml.safe_load(s.read_text(encoding="utf-8")).get("prompts") or [])
    ]
    rows = [(r["id"], text_of(r) if "messages" in r else f"{r['instruction']}\n{r.get('input', '')}") for r in ALL]
    assert near_duplicates(prompts, rows) == []
