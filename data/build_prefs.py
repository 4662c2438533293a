"""Build kielo's Finnish preference pairs (data/fi_prefs) from the instruction splits in data/fi_instruct.

One pair per source row, in the row's own split (train pairs from train rows only, dev from dev, test from
test), so the held-out pairs never share a prompt with the training pairs. ``chosen`` is the row's
reference answer; ``rejected`` is a realistic failure, labelled by ``rejected_kind``:

- ``no_end``: the base model's own greedy answer that runs on to the 96-token limit without ending, or,
  for rows without a cached generation, the reference repeated past that length and cut mid-word;
- ``repeats_prompt``: the base model's own answer when it restates the prompt, else the prompt echoed back
  (the input text unchanged for tasks with one: an uncorrected sentence, an unsimplified text);
- ``wrong_language``: the base model's own answer when it is not in the expected language, else (for
  translations) the untranslated source;
- ``wrong_fact``: the reference with one fact changed: arithmetic with the result of a slightly wrong
  computation from the row's ``expression``, another label from a classification row's label set, a changed
  number, or an extracted name swapped for one from another row.

``rejected_source`` says whether the rejection is the base model's own generation or was constructed. The
base model's answers come from data/base_generations.jsonl (written by data/generate_base.py), so this
build needs no model and is deterministic: the same inputs give the same files byte for byte.
Run from the repository root: python data/build_prefs.py
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "fi_instruct"
OUT = HERE / "fi_prefs"
GENERATIONS = HERE / "base_generations.jsonl"
SPLITS = ("train", "dev", "test")
KINDS = ("no_end", "repeats_prompt", "wrong_language", "wrong_fact")

# The order in which each task's rows take their rejection (row k of a task in a split starts at entry
# k mod len): a mix of kinds per task, weighted towards what fails most on that task. "generated" is the
# base model's own answer, labelled by what is wrong with it (a constructed run-on answer where there is
# no generation, or where the base model's answer ended); the others are constructed. A row whose first
# choice does not apply (no number to change, an echo equal to the reference) takes the next in the list.
ROTATION = {
    "arithmetic": ("wrong_fact", "generated", "wrong_fact", "echo"),
    "classification": ("wrong_fact", "generated", "echo"),
    "extraction": ("wrong_fact", "generated", "echo"),
    "format": ("wrong_fact", "generated", "echo"),
    "open_qa": ("wrong_fact", "generated", "echo"),
    "translation_en_fi": ("untranslated", "generated", "untranslated", "echo"),
    "translation_fi_en": ("untranslated", "generated", "untranslated", "echo"),
    "grammar": ("echo", "generated"),
    "rewrite": ("echo", "generated"),
    "summarization": ("generated", "echo"),
}
DEFAULT_ROTATION = ("generated", "generated", "echo", "wrong_fact")
STRATEGIES = ("generated", "wrong_fact", "untranslated", "echo")

# A generation restates the prompt when at least this share of the prompt's word n-grams appear in it.
ECHO_SHARE = 0.5


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _key(*parts) -> int:
    """A stable integer from strings (Python's hash() is salted per process)."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:8], 16)


def prompt_text(row: dict) -> str:
    """The last user turn: the instruction and input of an alpaca row, or a dialogue's last question."""
    if "messages" in row:
        return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]


def reference(row: dict) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["output"]


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def repeats_prompt(answer: str, prompt: str) -> bool:
    """Whether ``answer`` restates ``prompt``: most of the prompt's word trigrams (bigrams for short prompts) recur."""
    n = 3 if len(re.findall(r"\w+", prompt)) >= 6 else 2
    grams = _ngrams(prompt, n)
    return bool(grams) and len(grams & _ngrams(answer, n)) / len(grams) >= ECHO_SHARE


def _generated(row: dict, gen: dict | None) -> tuple[str, str] | None:
    """The base model's answer with its kind, or None when it is fine by these measures (it ended, same language)."""
    if gen is None or not gen["text"].strip():
        return None
    if gen["lang"] not in ("neutral", row["answer_lang"]):
        return gen["text"], "wrong_language"
    if repeats_prompt(gen["text"], prompt_text(row)):
        return gen["text"], "repeats_prompt"
    if not gen["ended"]:
        return gen["text"], "no_end"
    return None


# Arithmetic: the expression is evaluated with one plausible slip (a step forgotten, an operator mixed up,
# an operand misread by one or by ten); a slip counts when it gives another whole number of the same sign
# within a factor of three of the answer (what a careless solver writes, not 180000 for 8).
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}
_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.Sub, ast.FloorDiv: ast.Sub}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"unsupported expression node {ast.dump(node)}")


def _slips(expression: str) -> list[ast.AST]:
    slips = []
    for i in range(len(list(ast.walk(ast.parse(expression, mode="eval"))))):
        for slip in ("forget", "swap", 1, -1, 10, -10):
            tree = ast.parse(expression, mode="eval")
            node = list(ast.walk(tree))[i]
            if isinstance(node, ast.BinOp) and slip == "forget":
                node.right = ast.Constant(0 if isinstance(node.op, ast.Add | ast.Sub) else 1)
            elif isinstance(node, ast.BinOp) and slip == "swap":
                node.op = _SWAP[type(node.op)]()
            elif isinstance(node, ast.Constant) and isinstance(slip, int):
                node.value += slip
            else:
                continue
            slips.append(tree)
    return slips


def wrong_results(expression: str, answer: int) -> list[int]:
    """Plausible whole-number results of slightly wrong computations of ``expression``, none equal to ``answer``."""
    results = []
    for slip in _slips(expression):
        try:
            value = _evaluate(slip)
        except (ZeroDivisionError, ValueError):
            continue
        if not float(value).is_integer() or int(value) == answer or int(value) in results:
            continue
        if answer != 0 and (value * answer <= 0 or not abs(answer) / 3 <= abs(value) <= abs(answer) * 3):
            continue
        results.append(int(value))
    return results


def _number_pattern(value: int) -> re.Pattern:
    digits = str(abs(value))
    # Finnish writes thousands with a space (1 600) as well as without (1600).
    spaced = re.sub(r"(?<=\d)(?=(\d{3})+$)", " ", digits)
    sign = "[-−]" if value < 0 else ""
    return re.compile(rf"(?<![\d,.]){sign}(?:{re.escape(digits)}|{re.escape(spaced)})(?![\d]|,\d)")


def _arithmetic_fact(row: dict, key: int) -> str | None:
    candidates = wrong_results(row["expression"], row["answer"])
    if not candidates:
        return None
    wrong = candidates[key % len(candidates)]
    pattern = _number_pattern(row["answer"])
    if not pattern.search(row["output"].split("Vastaus:")[-1]):
        return None
    # Every mention of the result changes (the computation's last "= N" and the "Vastaus: N"), as a model
    # that got the number wrong would write it.
    return pattern.sub(str(wrong).replace("-", "−"), row["output"])


# A number, Finnish thousands groups included (8 215, 50 000); not part of a decimal or a longer number.
_NUMBER = re.compile(r"(?<![\d,.])(?:\d{1,3}(?: \d{3})+|\d+)(?!\d|,\d)")
# A person's name (two capitalized words): a fact that can be swapped for another person without the
# sentence's grammar breaking (a place in "Oulusta" cannot take "Heikki Rautio").
_PERSON = re.compile(r"[A-ZÅÄÖ][a-zåäö]+ [A-ZÅÄÖ][a-zåäö]+")


def _shifted(number: int, key: int) -> int:
    """``number`` moved by a small step in its own last significant digit (1870 -> 1880, 188 000 -> 189 000)."""
    unit = 1
    while number % (unit * 10) == 0 and number >= unit * 100:
        unit *= 10
    for i in range(4):
        value = number + (1, 2, -1, 3)[(key + i) % 4] * unit
        if value > 0:
            return value
    return number + unit


def _changed_number(text: str, key: int) -> str | None:
    """``text`` with one of its numbers (chosen by ``key``) shifted a little, or None when it has none.

    Single digits followed by ". " are list markers (1. 2. 3.), not facts, and stay as they are.
    """
    found = [m for m in _NUMBER.finditer(text) if not (len(m.group()) == 1 and text[m.end() : m.end() + 2] in (". ", ".\n", "."))]
    if not found:
        return None
    m = found[key % len(found)]
    value = _shifted(int(m.group().replace(" ", "")), key)
    written = f"{value:,}".replace(",", " ") if " " in m.group() else str(value)
    return text[: m.start()] + written + text[m.end() :]


def _wrong_fact(row: dict, key: int, names: list[str]) -> str | None:
    task = row["task"]
    if task == "arithmetic":
        return _arithmetic_fact(row, key)
    if task == "classification":
        others = [label for label in row["labels"] if label.lower() != row["output"].strip().lower()]
        wrong = others[key % len(others)]
        return wrong[0].upper() + wrong[1:] if row["output"][:1].isupper() else wrong
    if task == "extraction":
        for fact in row["facts"]:
            changed = _changed_number(fact, key)
            if changed is not None:
                return row["output"].replace(fact, changed)
        # A person swapped for another row's: the answer keeps its form, the fact is made up.
        fact = next((f for f in row["facts"] if _PERSON.fullmatch(f)), None)
        others = [n for n in names if n != fact and n not in row["input"]]
        if fact is None or not others:
            return None
        return row["output"].replace(fact, others[key % len(others)])
    return _changed_number(reference(row), key)


def _echo(row: dict) -> str:
    """The prompt handed back: the input unchanged when the row has one, else the question itself."""
    if "messages" in row:
        return prompt_text(row)
    return row["input"] if row.get("input") else row["instruction"]


def _constructed(strategy: str, row: dict, names: list[str]) -> tuple[str | None, str]:
    """A constructed rejection by ``strategy`` with its kind; the text is None when the strategy does not apply."""
    if strategy == "wrong_fact":
        return _wrong_fact(row, _key(row["id"]), names), "wrong_fact"
    if strategy == "untranslated":
        return (row["input"] if row["task"].startswith("translation_") else None), "wrong_language"
    return _echo(row), "repeats_prompt"


# A constructed run-on answer is about as long as the base model's 96 tokens (2.8 characters a token in
# Finnish), and always longer than the reference it repeats.
RUN_ON_CHARS = 270


def _run_on(row: dict) -> str:
    """The reference repeated until past the length limit and cut there, mid-word: how the base model runs on."""
    answer = reference(row).strip()
    limit = max(RUN_ON_CHARS, len(answer) + RUN_ON_CHARS // 3)
    text = answer
    while len(text) < limit:
        text += "\n\n" + answer
    return text[:limit].rstrip()


def _usable(text: str | None, row: dict) -> bool:
    return bool(text and text.strip()) and text.strip() != reference(row).strip()


def _order(row: dict, slot: int) -> list[str]:
    rotation = ROTATION.get(row["task"], DEFAULT_ROTATION)
    order = [rotation[(slot + i) % len(rotation)] for i in range(len(rotation))]
    return order + [s for s in STRATEGIES if s not in order]


def wants_generation(row: dict, slot: int, names: list[str]) -> bool:
    """Whether the row's rejection is the base model's answer when that answer is a failure (what to generate)."""
    for strategy in _order(row, slot):
        if strategy == "generated":
            return True
        if _usable(_constructed(strategy, row, names)[0], row):
            return False
    return False


def rejection(row: dict, slot: int, gen: dict | None, names: list[str]) -> tuple[str, str, str]:
    """(rejected answer, its kind, its source) for a source row; ``slot`` picks the first strategy to try."""
    generated = _generated(row, gen)
    if generated is not None and generated[1] == "wrong_language":
        return generated[0], "wrong_language", "base_generation"  # rare and the realest of failures: always kept
    for strategy in _order(row, slot):
        if strategy == "generated":
            if generated is not None and _usable(generated[0], row):
                return generated[0], generated[1], "base_generation"
            # Not generated (or the base model got this one right): a run-on answer stands in.
            return _run_on(row), "no_end", "constructed"
        text, kind = _constructed(strategy, row, names)
        if _usable(text, row):
            return text, kind, "constructed"
    raise AssertionError(f"{row['id']}: every order holds 'generated', which always gives a rejection")


def pair(row: dict, slot: int, gen: dict | None, names: list[str]) -> dict:
    """One preference row: alpaca-style (instruction, input), or TRL's conversational style for dialogues."""
    rejected, kind, source = rejection(row, slot, gen, names)
    head = {"id": row["id"], "task": row["task"], "answer_lang": row["answer_lang"]}
    if "messages" in row:
        body = {
            "prompt": row["messages"][:-1],
            "chosen": [{"role": "assistant", "content": reference(row)}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    else:
        body = {"instruction": row["instruction"], "input": row.get("input", ""), "chosen": row["output"], "rejected": rejected}
    return {**head, **body, "rejected_kind": kind, "rejected_source": source}


def _slotted(rows: list[dict]) -> tuple[list[tuple[dict, int]], list[str]]:
    """Each row with its position among its task's rows, and the split's names for swapped extraction facts."""
    # Names come from the same split, so no split leaks into another.
    names = sorted({f for r in rows if r["task"] == "extraction" for f in r["facts"] if _PERSON.fullmatch(f)})
    seen: dict[str, int] = {}
    slotted = []
    for row in rows:
        seen[row["task"]] = seen.get(row["task"], -1) + 1
        slotted.append((row, seen[row["task"]]))
    return slotted, names


def source_splits() -> dict[str, list[dict]]:
    return {split: _read_jsonl(SOURCE / f"{split}.jsonl") for split in SPLITS}


def generation_ids() -> list[str]:
    """The ids of the rows whose rejection may be the base model's own answer, in the order to generate them.

    The splits are interleaved (test at twice its share), so a generation run stopped part-way leaves each
    split with some of the base model's own answers.
    """
    ranked = []
    for split, rows in source_splits().items():
        slotted, names = _slotted(rows)
        wanted = sorted((_key("order", row["id"]), row["id"]) for row, slot in slotted if wants_generation(row, slot, names))
        weight = 2 * len(wanted) if split == "test" else len(wanted)
        ranked += [((k + 1) / weight, row_id) for k, (_, row_id) in enumerate(wanted)]
    return [row_id for _, row_id in sorted(ranked)]


def build(generations: dict[str, dict] | None = None) -> dict[str, list[dict]]:
    """The three splits of pairs, each in the source split's order (deterministic)."""
    if generations is None:
        generations = {g["id"]: g for g in _read_jsonl(GENERATIONS)}
    out = {}
    for split, rows in source_splits().items():
        slotted, names = _slotted(rows)
        out[split] = [pair(row, slot, generations.get(row["id"]), names) for row, slot in slotted]
    return out


def render(pairs: list[dict]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)


def count_table(splits: dict[str, list[dict]]) -> str:
    """The datasheet's table of pairs per kind and split, with how many are the base model's own answers."""
    lines = ["| kind | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    for kind in KINDS:
        cells = []
        for split in SPLITS:
            of_kind = [p for p in splits[split] if p["rejected_kind"] == kind]
            own = sum(p["rejected_source"] == "base_generation" for p in of_kind)
            cells.append(f"{len(of_kind)} ({own} generated)")
        lines.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    totals = [f"**{len(splits[s])}** ({sum(p['rejected_source'] == 'base_generation' for p in splits[s])} generated)" for s in SPLITS]
    lines.append("| **all** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    splits = build()
    for split, pairs in splits.items():
        (OUT / f"{split}.jsonl").write_text(render(pairs), encoding="utf-8")
    print(count_table(splits))


if __name__ == "__main__":
    main()
