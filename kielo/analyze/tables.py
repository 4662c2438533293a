"""The summary tables, as report-kit tables: the terminal, the HTML report and the JSON show the same cells."""

from __future__ import annotations

from kielo.analyze.languages import JUDGED_WORDS
from kielo.report import Table

MISSING = "–"


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal."""
    return MISSING if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    if x is None:
        return MISSING
    return f"{x:g}" if isinstance(x, float) else str(x)


def lengths_table(result: dict) -> Table:
    """Token length percentiles of prompts, responses and whole examples, per split."""
    keys = ("min", "mean", "median", "p90", "p95", "p99", "max")
    rows = []
    for name, s in result["splits"].items():
        for part in ("prompt", "response", "total"):
            summary = s["lengths"][part]
            rows.append(
                [name if part == "prompt" else "", str(s["examples"]) if part == "prompt" else "", part]
                + [_num(summary.get(k)) for k in keys]
            )
    return Table(
        ["split", "examples", "part", *keys],
        rows,
        title="Token lengths (before data.max_length)",
        notes=["prompt: tokens before the first answer; response: all answers with their end tokens"],
    )


def max_length_table(result: dict) -> Table:
    """What truncation, the end token, BOS handling and empty fields come to, per split."""
    rows = []
    for name, s in result["splits"].items():
        end = s["end_token"]
        empty = s["empty_fields"]
        rows.append(
            [
                name,
                f"{s['over_max_length']} ({pct(s['over_max_length_share'])})",
                f"{s['tokens_lost']} ({pct(s['tokens_lost_share'])})",
                str(s["response_cut_entirely"]),
                f"{end['present']}/{s['examples']}",
                str(s["double_bos"]),
                str(empty["examples"]),
            ]
        )
    max_length = next(iter(result["splits"].values()))["max_length"]
    return Table(
        ["split", "longer", "tokens lost", "answer cut entirely", "end token trained", "double BOS", "empty fields"],
        rows,
        title=f"What data.max_length={max_length} and the template do",
    )


def budget_table(result: dict) -> Table:
    """Trained, masked and padding tokens per split and batching mode."""
    rows = []
    mbs = None
    for name, b in result["token_budget"].items():
        mbs = b.get("micro_batch_size", mbs)
        for k, (mode, c) in enumerate(b["modes"].items()):
            label = mode.replace("_", " ") + (" (training)" if mode == b["training_uses"] else "")
            rows.append(
                [
                    name if k == 0 else "",
                    label,
                    str(c["micro_batches"]),
                    f"{c['trained']} ({pct(c['trained_share'])})",
                    f"{c['masked']} ({pct(c['masked_share'])})",
                    f"{c['padding']} ({pct(c['padding_share'])})",
                ]
            )
    return Table(
        ["split", "batching", "micro-batches", "trained", "masked", "padding"],
        rows,
        title=f"Tokens in one epoch of micro-batches (micro_batch_size {mbs})",
        notes=[
            "each split batched as training batches its data; trained: in the loss; masked: in the batch, "
            "not in the loss (prompts, template text); length grouped is not a training option yet"
        ],
    )


def duplicates_table(result: dict) -> Table:
    """Exact and near duplicates per split, then overlap between splits."""
    d = result["duplicates"]
    rows = [[name, str(s["exact"]), str(s["near"])] for name, s in d["splits"].items()]
    rows += [[f"{o['b']} in {o['a']}", str(o["exact"]), f"{o['exact_or_near'] - o['exact']}"] for o in d["overlap"]]
    return Table(
        ["split / overlap", "exact", "near"], rows, title=f"Duplicates (near: 5-gram Jaccard ≥ {d['threshold']}, {d['method']})"
    )


def languages_table(result: dict) -> Table:
    """Language shares of prompts and answers per split."""

    def shares(d: dict) -> str:
        return ", ".join(f"{code} {pct(v)}" for code, v in list(d.items())[:4]) or "–"

    rows = [
        [
            name,
            f"{lang['checked']}/{lang['of']}",
            shares(lang["prompt"]),
            shares(lang["answer"]),
            str(lang["answer_not_in_answer_lang"]),
        ]
        for name, lang in result["languages"].items()
    ]
    return Table(
        ["split", "checked", "prompts", "answers", "answer not in answer_lang"],
        rows,
        title="Languages (kielo.lang)",
        notes=[f"answers under {JUDGED_WORDS} words are not judged against answer_lang"],
    )


def tokenizers_table(result: dict) -> Table:
    """Tokenizer efficiency on Finnish text, one row per tokenizer."""
    rows = []
    for name, e in result["tokenizers"].items():
        worst = ", ".join(f"{w['split']}" for w in e["most_fragmented"][:4])
        rows.append([name, _num(e["chars_per_token"]), _num(e["tokens_per_word"]), pct(e["words_3plus_pieces_share"]), worst or "–"])
    first = next(iter(result["tokenizers"].values()))
    language = "Finnish" if result["tokenizers_language"] == "fi" else "all sampled"
    return Table(
        ["tokenizer", "chars/token", "tokens/word", "words in 3+ pieces", "most fragmented frequent words"],
        rows,
        title=f"Tokenizers on {language} text ({first['texts']} texts, {first['words']} words)",
    )


def fragmented_tables(result: dict) -> list[Table]:
    """The most fragmented frequent words, one table per tokenizer."""
    return [
        Table(
            ["word", "count", "pieces", "split"],
            [[w["word"], str(w["count"]), str(w["pieces"]), w["split"]] for w in e["most_fragmented"]],
            title=name,
        )
        for name, e in result["tokenizers"].items()
    ]


def duplicate_examples(result: dict) -> list[str]:
    """One line per duplicate or overlap example found."""
    items = []
    for name, s in result["duplicates"]["splits"].items():
        items += [f"{name}: exact — {d['b']} = {d['a']}: {d['text']}" for d in s["exact_examples"]]
        items += [f"{name}: near (J≈{d['jaccard']}) — {d['b']} ~ {d['a']}: {d['text']}" for d in s["near_examples"]]
    for o in result["duplicates"]["overlap"]:
        items += [f"{o['b']} also in {o['a']}: {d['b']}: {d['text']}" for d in o["examples"]]
    return items


def all_tables(result: dict) -> list[Table]:
    """Every summary table, in report order."""
    return [
        lengths_table(result),
        max_length_table(result),
        budget_table(result),
        duplicates_table(result),
        languages_table(result),
        tokenizers_table(result),
    ]


def recommendation(result: dict) -> str:
    """The max_length recommendation as a sentence."""
    rec = result.get("max_length")
    if not rec:
        return ""
    return (
        f"data.max_length: {rec['configured']} covers {pct(rec['configured_covers'])} of {rec['split']} examples "
        f"(longest {rec['longest']}); {rec['suggested']} covers the 99th percentile ({rec['p99']:g} tokens): "
        f"{pct(rec['suggested_covers'])}"
    )


def pairs_table(result: dict) -> Table | None:
    """Preference pairs per split: answer lengths and their difference, shared prefix, truncation by side."""
    pairs = result.get("pairs")
    if not pairs:
        return None
    rows = []
    limit = next(iter(pairs.values()))["max_length"]
    for name, p in pairs.items():
        for label, key in (
            ("chosen answer", "chosen_answer_tokens"),
            ("rejected answer", "rejected_answer_tokens"),
            ("chosen - rejected", "length_difference"),
            ("shared prefix", "shared_prefix_tokens"),
        ):
            spread = p[key]
            rows.append(
                [
                    name if key == "chosen_answer_tokens" else "",
                    label,
                    *(_num(spread.get(k)) for k in ("min", "mean", "median", "p95", "max")),
                ]
            )
        rows.append(
            [
                "",
                "truncated (chosen / rejected / either)",
                f"{p['truncated_chosen']} / {p['truncated_rejected']} / {p['truncated_either']}",
                "",
                "",
                "",
                "",
            ]
        )
    return Table(
        ["split", "tokens", "min", "mean", "median", "p95", "max"],
        rows,
        title="Preference pairs",
        notes=[f"answers in tokens with their end token; truncated: prompt + answer over data.max_length={limit}"],
    )
