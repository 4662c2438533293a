"""The report files of `kielo evaluate` and `kielo compare`: JSON, Markdown, HTML, figures, the generations
as JSONL and the resolved config. What the reports show is built in :mod:`kielo.evaluate.document`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kielo.config.load import save_config
from kielo.config.schema import Config
from kielo.errors import KieloError
from kielo.evaluate.document import comparison_report, evaluation_report, training_blocks
from kielo.evaluate.format import safe_name
from kielo.evaluate.training import training_runs
from kielo.report import Report, files
from kielo.report.figures import available

log = logging.getLogger(__name__)

JSON_FILE, MARKDOWN_FILE, HTML_FILE = "report.json", "report.md", "report.html"


def _guard(out: Path) -> None:
    if (out / "adapter_config.json").is_file() or (out / "checkpoints").is_dir():
        raise KieloError(
            f"{out} holds a training run; the report would overwrite its config", "pass another --output_dir for the report"
        )


def _write_generations(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = [r for r in rows if r["generation"] is not None]
    with path.open("w", encoding="utf-8") as fh:
        for r in keep:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_evaluation(report: dict, out: Path, config: Config) -> None:
    """``report.json``, ``report.md``, ``generations.jsonl`` and the resolved config into ``out``."""
    _guard(out)
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {
        "json": str(out / JSON_FILE),
        "markdown": str(out / MARKDOWN_FILE),
        "generations": str(out / "generations.jsonl"),
        "config": str(save_config(config, out)),
    }
    _write_generations(out / "generations.jsonl", report["result"]["examples"])
    files.write(evaluation_report(report), out, markdown_file=MARKDOWN_FILE, json_file=JSON_FILE)
    log.info("report written to %s", out / MARKDOWN_FILE)


def write_comparison(report: dict, out: Path, config: Config) -> None:
    """``report.json``, ``report.md``, ``report.html``, ``generations/*.jsonl``, ``plots/*.png`` and the config.

    Adds ``training`` to ``report``: each adapter's training curve and hyperparameters from its run folder."""
    from kielo.evaluate import plots

    _guard(out)
    out.mkdir(parents=True, exist_ok=True)
    gens = {}
    for name, res in report["results"].items():
        path = out / "generations" / f"{safe_name(name)}.jsonl"
        _write_generations(path, res["examples"])
        gens[name] = str(path)
    # What training recorded for each adapter's run: its curve and hyperparameters go into the report.
    report["training"] = training_runs(report["variants"])
    figures = plots.draw_all(report)
    if not figures:
        report["notes"].append("Plots skipped: matplotlib is not installed (pip install 'kielo[eval]').")
    report["files"] = {
        "json": str(out / JSON_FILE),
        "markdown": str(out / MARKDOWN_FILE),
        "html": str(out / HTML_FILE),
        "generations": gens,
        "plots": {name: str(out / files.FIGURES_DIR / f"{name}.png") for name in figures},
        "config": str(save_config(config, out)),
    }
    document = comparison_report(report, figures)
    files.write_figures(document, out / files.FIGURES_DIR)
    files.write(document, out, markdown_file=MARKDOWN_FILE, html_file=HTML_FILE, json_file=JSON_FILE)
    log.info("report written to %s", out / HTML_FILE)


def write_training(run_dir: str | Path, out: Path) -> Path:
    """``report.html`` and ``report.json`` in ``out`` with what the run in ``run_dir`` recorded while it trained:
    its training curve (drawn when matplotlib is installed) and its hyperparameters. Returns the HTML's path."""
    from kielo.evaluate import plots

    run = Path(run_dir)
    training = training_runs([{"name": run.name, "adapter": str(run)}])
    if not training:
        raise KieloError(f"{run} is not a kielo run folder", "give the output_dir of a `kielo train` run")
    curve = plots.training_curve(training) if available() else None
    document = Report(f"kielo train: {run.name}", training_blocks(training, {curve.name: curve} if curve else {}), data=training)
    files.write(document, out, html_file=HTML_FILE, json_file=JSON_FILE)
    return out / HTML_FILE
