"""`kielo demo --preference`: DPO from the demo's SFT adapter, then SFT vs SFT+DPO on held-out data.

After the usual stages (:mod:`kielo.demo`), two more, timed apart from them: ``dpo-train`` trains DPO with
``lora.init_from`` the demo's SFT run (so the SFT adapter is both the start and the reference) on the bundled
Finnish preference pairs' train split, with the recipe of ``configs/demo_dpo.yaml`` (its ``training``
section; chosen on the dev split); ``dpo-compare`` runs ``kielo compare`` on the base, the SFT adapter and the
SFT+DPO adapter on the held-out test split: the usual metrics on ``data/fi_instruct/test.jsonl`` and the
preference accuracy on ``data/fi_prefs/test.jsonl``, and the paired difference SFT+DPO minus SFT of each.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path

from kielo.config.load import from_dict, read_yaml
from kielo.config.schema import Config
from kielo.data.records import read_rows
from kielo.report import Paragraph, Section, Table
from kielo.resources import RESOURCES

log = logging.getLogger(__name__)

DPO_CONFIG = "configs/demo_dpo.yaml"
PREFS_TRAIN = "data/fi_prefs/train.jsonl"
PREFS_TEST = "data/fi_prefs/test.jsonl"
DPO_RUN = "tuned-dpo"
# The numbers the demo's report shows for SFT vs SFT+DPO: (key in compare's results, label, a share).
HEADLINE = (
    ("loss", "loss", False),
    ("chrf", "chrF", False),
    ("end_token", "ends with end token", True),
    ("expected_language", "expected language", True),
)


def recipe() -> dict:
    """The DPO stage's ``training`` settings, from the shipped ``configs/demo_dpo.yaml``."""
    return dict(read_yaml(RESOURCES / DPO_CONFIG).get("training") or {})


def train_subset(source: Path, pairs: int | None, seed: int, out: Path) -> tuple[Path, int]:
    """A seeded sample of ``pairs`` rows of ``source`` written to ``out`` (all rows when None or there are fewer):
    the pairs ``max_steps`` will see, so the reference log-probabilities are computed for those alone."""
    _, rows = read_rows(source, "data/fi_prefs/train.jsonl")
    chosen = [row for _, row in rows]
    if pairs is not None and pairs < len(chosen):
        chosen = random.Random(seed).sample(chosen, pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    return out, len(chosen)


def dpo_config(config: Config, given: Collection[str], sft_run: Path, out: Path) -> tuple[Config, dict]:
    """The DPO stage's config: the demo's (model, quantization, template, generation, ``data.max_length``) with the
    recipe's ``training`` keys, except those given on the command line (``given``: dotted keys, which win), and
    the SFT run as ``lora.init_from``; its data a sample of the train split's pairs. Returns it and what was used."""
    data = asdict(config)
    training = {k: v for k, v in recipe().items() if f"training.{k}" not in given}
    data["training"] = {**data["training"], **training}
    t = data["training"]
    # max_steps 0 trains for training.epochs over every train pair.
    steps = int(t["max_steps"])
    wanted = steps * int(t["micro_batch_size"]) * int(t["gradient_accumulation"]) if steps > 0 else None
    subset, n = train_subset(RESOURCES / PREFS_TRAIN, wanted, int(t["seed"]), out / "dpo-data" / "train.jsonl")
    data["data"] = {**data["data"], "train": str(subset), "validation": None, "validation_split": 0.0, "packing": False}
    data["lora"] = {**data["lora"], "init_from": str(sft_run)}
    data["output_dir"] = str(out / DPO_RUN)
    used = {
        "recipe": DPO_CONFIG,
        "training": {k: t[k] for k in recipe()},
        "train_pairs": n,
        "train_file": str(RESOURCES / PREFS_TRAIN),
    }
    return from_dict(data), used


def _interval(ci: dict | None, share: bool) -> str:
    if not ci:
        return "–"
    s, d = (100, 1) if share else (1, 3)
    unit = "%" if share else ""
    return f"{ci['value'] * s:.{d}f}{unit} [{ci['low'] * s:.{d}f}, {ci['high'] * s:.{d}f}]"


def _difference(ci: dict | None, share: bool) -> str:
    if not ci:
        return "–"
    s, d = (100, 1) if share else (1, 3)
    unit = " pp" if share else ""
    return f"{ci['delta'] * s:+.{d}f}{unit} [{ci['low'] * s:+.{d}f}, {ci['high'] * s:+.{d}f}]"


def held_out_table(result: dict) -> dict:
    """From ``kielo compare``'s report: every model's headline numbers with their intervals, and SFT+DPO minus
    SFT as paired differences with intervals (preference numbers from ``preference``; the others recomputed
    here from the two adapters' per-example rows, as compare pairs an adapter with the base)."""
    from kielo.evaluate import paired

    names = list(result["results"])
    sft, dpo = names[1], names[-1]
    rows = {n: result["results"][n] for n in names}
    diffs = paired.deltas(rows[sft]["examples"], rows[dpo]["examples"], result["settings"]["bootstrap_resamples"])
    pref = result.get("preference") or {}
    table = {"models": {}, "difference": {"of": f"{dpo} - {sft}"}}
    for n in names:
        m = {key: rows[n]["intervals"].get(key) for key, _, _ in HEADLINE}
        m |= {k: pref["models"][n][k] for k in ("accuracy", "margin", "logp_accuracy")} if pref else {}
        table["models"][n] = m
    table["difference"] |= {key: diffs.get(key) for key, _, _ in HEADLINE}
    if pref:
        table["difference"] |= {k: pref["deltas"][dpo][k] for k in ("accuracy", "margin", "logp_accuracy")}
        table["pairs"], table["beta"] = pref["pairs"], pref["beta"]
    return table


def report_blocks(stages: list[dict], total: float, table: dict | None, used: dict | None) -> list:
    """The demo report's part on the preference stages: their times (apart from the usual stages') and the
    held-out table of the base, SFT and SFT+DPO with intervals and the paired difference."""
    times = Table(
        ["stage", "seconds"], [[s["stage"], s["seconds"]] for s in stages], formats={"seconds": ".0f"}, footer=["total", total]
    )
    blocks: list = [times]
    if used:
        settings = ", ".join(f"{k} {v}" for k, v in used["training"].items())
        blocks.append(Paragraph(f"DPO from the SFT adapter on {used['train_pairs']} pairs of `{PREFS_TRAIN}` ({settings})."))
    if table:
        keys = [*HEADLINE, ("accuracy", "preference accuracy", True), ("margin", "reward margin", False)]
        keys.append(("logp_accuracy", "log-prob accuracy", True))
        columns = ["model", *[label for _, label, _ in keys]]
        rows = [[n, *[_interval(m.get(k), share) for k, _, share in keys]] for n, m in table["models"].items()]
        rows.append([table["difference"]["of"], *[_difference(table["difference"].get(k), share) for k, _, share in keys]])
        caption = (
            "Held-out test split; 95% bootstrap intervals (the last row: paired over the same examples or pairs). Preference "
            f"numbers on {table.get('pairs', 0)} pairs of `{PREFS_TEST}`: DPO's implicit reward, beta {table.get('beta', '–')}, "
            "against the base (so the base is 50% by construction)."
        )
        blocks.append(Table(columns, rows, caption=caption))
    return [Section("Preference stages (timed apart from the usual stages)", blocks)]


def preference_stages(report, config: Config, given: Collection[str], sft_run: Path, held_out: str, generate: int | None) -> list:
    """Run ``dpo-train`` and ``dpo-compare`` as stages of the demo's ``report`` (:class:`kielo.demo.Stages`), after
    the usual ones; returns the report blocks. ``config``: the demo's, ``held_out``: the instruction test split,
    ``generate``: held-out examples generated on per model (None: all)."""
    import time

    from kielo.evaluate.report import write_training
    from kielo.evaluate.run import compare
    from kielo.train.trainer import train

    out = report.out
    started = time.time()
    dpo, used = dpo_config(config, given, sft_run, out)

    def train_stage() -> dict:
        summary = train(dpo)
        return {**summary, "recipe": used, "html": str(write_training(dpo.output_dir, out / "train-dpo"))}

    def compare_stage() -> dict:
        result = compare(
            config,
            held_out,
            [str(sft_run), dpo.output_dir],
            generate=generate,
            preference_data=str(RESOURCES / PREFS_TEST),
            output_dir=out / "compare-dpo",
        )
        return {"summary": result["summary"], "table": held_out_table(result), "html": str(out / "compare-dpo" / "report.html")}

    report.stage("dpo-train", train_stage)
    table = report.stage("dpo-compare", compare_stage)["table"]
    report.results["preference_seconds"] = round(time.time() - started, 1)
    stages = [s for s in report.stages if s["stage"] in ("dpo-train", "dpo-compare")]
    return report_blocks(stages, report.results["preference_seconds"], table, used)
