"""`kielo demo`: every stage kielo has, offline, on the embedded default model.

analyze-data → train → compare (base vs tuned on held-out data) → prompt suite → merge, into one output
folder with a report (Markdown + JSON) that gives each stage's time, links each stage's HTML report and
shows the evidence that fine-tuning worked. The defaults come from ``configs/demo.yaml``, shipped in the
package (:mod:`kielo.resources`) with the data and the prompt suite, so the demo runs from any folder; any
config key can be overridden as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from kielo.config.load import read_yaml, save_config
from kielo.config.schema import Config
from kielo.report import Bullets, Check, Checks, Paragraph, Report, Section, Table
from kielo.report.data import render as render_json
from kielo.report.data import write_json
from kielo.report.markdown import render as render_markdown
from kielo.resources import RESOURCES

log = logging.getLogger(__name__)

DEMO_CONFIG = "configs/demo.yaml"
HELD_OUT = "data/fi_instruct/test.jsonl"
# The stages `--preference` adds (kielo.demo_preference), timed apart from these.
PREFERENCE_STAGES = ("dpo-train", "dpo-compare")
GENERATE_DEFAULT = 48  # task-stratified held-out examples generated on (all of them with --full)

# The evidence bars the README's claim rests on (tuned vs base, held-out data).
BARS = {
    "loss_reduction": 0.20,  # tuned response loss at least 20% below the base's
    "ended": 0.90,  # answers that end with the end token before the limit
    "expected_language": 0.90,  # answers in the expected language
}


def demo_base() -> tuple[dict, Path]:
    """The demo config as a dict and the folder its relative paths are relative to (the package's resources)."""
    return read_yaml(RESOURCES / DEMO_CONFIG), RESOURCES


def resolve_paths(config: Config, root: Path) -> Config:
    """``config`` with the demo's relative data paths made to work from any working directory."""
    paths = {}
    for key in ("train", "validation"):
        value = getattr(config.data, key)
        if value and not Path(value).is_absolute() and not Path(value).exists() and (root / value).exists():
            paths[key] = str(root / value)
    return replace(config, data=replace(config.data, **paths))


def fresh_dir(path: Path) -> Path:
    """``path`` if it is new or empty, else ``path-2``, ``path-3``...: an earlier demo is never overwritten."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


@dataclass
class Stages:
    """The demo's stages as they run: each one's time and result, written to ``report.json`` after each."""

    out: Path
    stages: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        log.info("== %s ==", name)
        started = time.time()
        result = fn()
        seconds = round(time.time() - started, 1)
        self.stages.append({"stage": name, "seconds": seconds})
        self.results[name] = result
        log.info("%s done in %.0f s", name, seconds)
        self.write()
        return result

    def write(self) -> None:
        # Written after every stage, so an interrupted demo still shows how far it got.
        write_json({"stages": self.stages, "results": self.results}, self.out / "report.json", indent=2, lenient=True)


def evidence(summary: dict, tuned: str) -> dict:
    """Check the compare summary against :data:`BARS`; each bar with its measured value and verdict."""
    base, model = summary["models"]["base"], summary["models"][tuned]
    deltas = summary["deltas"][tuned]
    checks = {}
    if base.get("loss") and model.get("loss") is not None:
        reduction = (base["loss"] - model["loss"]) / base["loss"]
        checks["loss_reduction"] = {
            "value": reduction,
            "bar": f">= {BARS['loss_reduction']:.0%}",
            "passed": reduction >= BARS["loss_reduction"],
        }
    for key, metric in (("ended", "end_token"), ("expected_language", "expected_language")):
        if model.get(metric) is not None:
            checks[key] = {"value": model[metric], "bar": f">= {BARS[key]:.0%}", "passed": model[metric] >= BARS[key]}
    for metric in ("chrf", "task_success"):
        d = deltas.get(metric)
        if d:
            checks[f"{metric}_delta"] = {
                "value": d["delta"],
                "interval": [d["low"], d["high"]],
                "bar": "95% interval above 0",
                "passed": d["low"] > 0,
            }
    return checks


def stage_links(report: Stages) -> list[str]:
    """A Markdown link to each stage's HTML report, relative to the demo's folder (where report.md is)."""
    links = []
    for s in report.stages:
        page = (report.results.get(s["stage"]) or {}).get("html")
        if page:
            rel = Path(page).relative_to(report.out).as_posix()
            links.append(f"{s['stage']}: [{rel}]({rel})")
    return links


def demo_report(
    report: Stages, checks: dict, summary: dict | None, suite: dict | None, full: bool = True, preference: list | None = None
) -> Report:
    """The demo's report: each stage's time, the held-out results, the evidence bars, the suite pass rates, and
    ``preference`` (the blocks of :func:`kielo.demo_preference.report_blocks`) when those stages ran."""
    stages = Table(
        ["stage", "seconds"],
        [[s["stage"], s["seconds"]] for s in report.stages if s["stage"] not in PREFERENCE_STAGES],
        formats={"seconds": ".0f"},
        footer=["total", report.results.get("total_seconds", 0)],
    )
    blocks: list = [stages]
    links = stage_links(report)
    if links:
        blocks.append(Section("Reports", [Bullets(links)]))
    if summary:
        columns = ["model", "loss", "chrF", "task success", "ends with end token", "expected language"]
        keys = ["loss", "chrf", "task_success", "end_token", "expected_language"]
        results = Table(
            columns,
            [[name, *[m.get(k) for k in keys]] for name, m in summary["models"].items()],
            formats=dict(zip(columns[1:], [".3f", ".3f", ".1%", ".1%", ".1%"], strict=True)),
            missing="–",
        )
        bars = [
            Check(
                key,
                f"{c['value']:.3f}" + (f" (95% CI {c['interval'][0]:.3f} … {c['interval'][1]:.3f})" if "interval" in c else ""),
                c["bar"],
                c["passed"],
            )
            for key, c in checks.items()
        ]
        evidence_blocks: list = [Checks(bars)]
        if not full:
            # The rates and intervals above come from a subset; the claim is judged on all held-out examples.
            n = next(iter(summary["models"].values())).get("generated_examples")
            evidence_blocks.append(
                Paragraph(
                    f"Generation metrics here come from {n} task-stratified held-out examples (the loss from all "
                    "of them); the evidence is judged on every held-out example with `kielo demo --full`, "
                    "where the intervals are narrower."
                )
            )
        blocks += [Section("Held-out results (base vs tuned)", [results]), Section("Evidence bars", evidence_blocks)]
    if suite:
        blocks.append(Section("Prompt suite pass rates", [Bullets([f"{k}: {v:.0%}" for k, v in suite.items()])]))
    blocks += preference or []
    return Report("kielo demo", blocks, data={"stages": report.stages, "results": report.results})


def run_demo(
    config: Config,
    full: bool = False,
    strict: bool = False,
    generate_n: int | None = None,
    preference: bool = False,
    given: Collection[str] = (),
) -> int:
    """Run the whole workflow; returns the exit code (non-zero with ``strict`` when the prompt suite fails).

    ``full`` generates on every held-out example (the README's evidence); otherwise on a task-stratified
    subset of ``generate_n`` (default 48). The loss is always computed on all held-out examples.
    ``preference`` adds the DPO stages of :mod:`kielo.demo_preference` after the usual ones, timed apart;
    ``given`` (the dotted keys set on the command line) win over the DPO recipe's too.
    """
    from kielo.analyze.run import analyze_data
    from kielo.evaluate.report import write_training
    from kielo.evaluate.run import compare
    from kielo.merge.run import HTML_FILE as MERGE_HTML
    from kielo.merge.run import merge
    from kielo.prompt.report import write_outputs
    from kielo.prompt.run import run_suite_file
    from kielo.train.trainer import train

    _, root = demo_base()
    config = resolve_paths(config, root)
    held_out = str(root / HELD_OUT)
    out = fresh_dir(Path(config.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    log.info("demo output: %s", out)
    save_config(config, out)
    report = Stages(out)
    started = time.time()
    run_dir = out / "tuned"

    def train_stage() -> dict:
        # The compare stage measures base vs tuned on held-out data; validation during training would
        # only repeat that at a cost of minutes on a CPU.
        summary = train(replace(config, output_dir=str(run_dir), data=replace(config.data, validation=None)))
        return {**summary, "html": str(write_training(run_dir, out / "train"))}

    def eval_config() -> Config:
        # Base and tuned are both measured on the 4-bit base the adapter was trained on (on a CPU its
        # weights are dequantized once at load: the same function at a plain model's speed).
        return config

    def compare_stage() -> dict:
        cfg = eval_config()
        n = None if full else (generate_n or GENERATE_DEFAULT)
        result = compare(cfg, held_out, [str(run_dir)], generate=n, output_dir=out / "compare")
        return {"summary": result["summary"], "html": str(out / "compare" / "report.html")}

    def suite_stage() -> dict:
        run = run_suite_file(eval_config(), [str(run_dir)])
        page = write_outputs(run, out / "prompt-suite", "suite", f"kielo demo: prompt suite {run.suite.name if run.suite else ''}")[2]
        return {"pass_rates": run.pass_rates(), "html": str(page)}

    def merge_stage() -> dict:
        r = merge(config, str(run_dir), out / "merged", samples=2, max_new_tokens=16)
        kept = {k: r[k] for k in ("output", "dtype", "passed", "storage", "verification") if k in r}
        return {**kept, "html": str(out / "merged" / MERGE_HTML)}

    def analyze_stage() -> dict:
        files = [config.data.train, config.data.validation or held_out, held_out]
        result = analyze_data(files, config, output_dir=out / "analyze", examples=2)
        return {"warnings": result.get("warnings", []), "html": result["outputs"]["html"]}

    report.stage("analyze-data", analyze_stage)
    report.stage("train", train_stage)
    summary = report.stage("compare", compare_stage)["summary"]
    suite = report.stage("prompt-suite", suite_stage)["pass_rates"]
    report.stage("merge", merge_stage)
    report.results["total_seconds"] = round(time.time() - started, 1)
    tuned = run_dir.name
    checks = evidence(summary, tuned)
    report.results["evidence"] = checks
    extra = None
    if preference:
        from kielo.demo_preference import preference_stages

        n = None if full else (generate_n or GENERATE_DEFAULT)
        extra = preference_stages(report, eval_config(), given, run_dir, held_out, n)
    document = demo_report(report, checks, summary, suite, full, extra)
    write_json(render_json(document), out / "report.json", indent=2, lenient=True)
    (out / "report.md").write_text(render_markdown(document), encoding="utf-8")
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"full report: {out / 'compare' / 'report.html'}")
    if strict and suite.get(tuned, 0) < 1:
        return 1
    return 0
