"""The HTML reports people read: long answers wrap in their cells, bar charts start their axes by one rule
and label their bars, no empty tables, compare shows the training curve and hyperparameters, and the
prompt suite, merge and demo write (and link) HTML."""

from __future__ import annotations

import json
import re
from html import escape

import pytest
from conftest import ROWS, tiny_config

from kielo.cli import main
from kielo.config.load import load_config
from kielo.evaluate.run import compare
from kielo.report import Example, Examples, Report, Shown, Table, html


def css_rules(page: str, selector: str) -> str:
    """Every declaration of the page's CSS rules whose selector list names ``selector``."""
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    found = [body for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css) if selector in [s.strip() for s in sel.split(",")]]
    return ";".join(found)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


# --- the report kit ------------------------------------------------------------------------------------


def test_long_answers_wrap_inside_their_cells():
    long_word = "x" * 3000  # one "word" with no space to break at: it overflowed its cell
    page = html.render(
        Report(
            "wrap",
            [
                Examples([Example("e1", "", [Shown("prompt", "Kysymys?"), Shown("answer", f"alku\n{long_word}")])]),
                Table(["prompt", "answer", "n"], [["Kysymys?", f"rivi 1\nrivi 2 {long_word}", 3]], wrap=["prompt", "answer"]),
            ],
        )
    )
    assert f'<div class="gen">alku\n{long_word}</div>' in page
    for selector in (".gen", "td.text"):
        rules = css_rules(page, selector).replace(" ", "")
        assert "white-space:pre-wrap" in rules and "overflow-wrap:anywhere" in rules, (selector, rules)
    assert "table-layout:fixed" in css_rules(page, "table.examples") and '<table class="examples">' in page
    cells = re.findall(r"<td([^>]*)>(.*?)</td>", page.split('<table class="examples">')[1].split("</table>", 1)[1], re.S)
    assert [c[0] for c in cells] == [' class="text"', ' class="text"', ""]  # long text wraps, the number stays as it is
    with pytest.raises(ValueError, match="wrap for unknown columns"):
        Table(["a"], wrap=["b"])


def test_bar_axes_follow_one_rule():
    from kielo.report.figures import bar_limits, delta_limits

    # A loss has no meaningful zero: bars of 0.97 and 0.98 start just below the smaller one.
    low, high = bar_limits([0.97, 0.98])
    assert 0.9 < low < 0.97 and 0.98 < high < 1.05
    assert bar_limits([5.93, 5.95, float("nan")])[0] > 5.5  # a missing bar does not pull the axis to 0
    # Values whose spread reaches down towards 0 start at 0; negative values are never cut off.
    assert bar_limits([1.0, 5.0])[0] == 0.0 and bar_limits([-2.0, 1.0])[0] < -2.0
    # A share (in %) is drawn on its whole scale from 0; a change is centred on 0.
    assert bar_limits([97.0, 98.0], full_scale=100.0) == (0.0, 110.0)
    assert delta_limits([-0.5, 2.0]) == pytest.approx((-2.7, 2.7)) and delta_limits([]) == (-1.0, 1.0)


def _task(loss, chrf, success):
    return {"loss": {"loss": loss} if loss is not None else None, "metrics": {"chrf": chrf, "task_success": success}}


def test_per_task_bars_are_labelled_and_the_loss_axis_is_not_wasted():
    from kielo.evaluate.plots import per_task_figure

    report = {
        "results": {
            "base": {"per_task": {"open_qa": _task(0.97, 40.0, 0.5), "rewrite": _task(0.98, 30.0, None)}},
            "run": {"per_task": {"open_qa": _task(0.975, 45.0, 0.75), "rewrite": _task(None, 35.0, None)}},
        }
    }
    fig = per_task_figure(report)
    loss_ax, chrf_ax, task_ax = fig.axes
    assert 0.9 < loss_ax.get_ylim()[0] < 0.97  # not 0: from there 0.97 and 0.98 would look the same
    assert chrf_ax.get_ylim() == (0.0, 110.0) and task_ax.get_ylim() == (0.0, 110.0)
    # Every drawn bar carries its value; a missing value is no bar (not a bar of 0).
    assert sorted(t.get_text() for t in loss_ax.texts) == ["0.970", "0.975", "0.980"]
    assert sorted(t.get_text() for t in chrf_ax.texts) == ["30", "35", "40", "45"]
    assert sorted(t.get_text() for t in task_ax.texts) == ["50", "75"]
    # One task type only (rows without a `task` tag): no per-task chart.
    one = {"results": {n: {"per_task": {"other": _task(1.0, 1.0, None)}} for n in ("base", "run")}}
    assert per_task_figure(one) is None
    fig.clf()


# --- compare, prompt suite and merge on a tiny run -------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    """A tiny run with a validation split, so its metrics.jsonl holds training and validation records."""
    from kielo.train.trainer import train

    root = tmp_path_factory.mktemp("html-run")
    data = write_jsonl(root / "train.jsonl", ROWS * 4)
    train(tiny_config(tiny_llama, data, root / "run", quantization={"bits": 0}, training={"eval_every": 2}), progress=False)
    return root / "run"


def test_compare_shows_the_training_curve_and_hyperparameters_and_no_empty_task_table(tiny_llama, run, tmp_path):
    untagged = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki."},
            {"instruction": "Käännä englanniksi.", "input": "Hyvää huomenta!", "output": "Good morning!"},
            {"instruction": "Luettele kolme järveä.", "output": "Saimaa, Päijänne ja Inari."},
        ],
    )
    cfg = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0, "generation.max_new_tokens": 4})
    out = tmp_path / "cmp"
    report = compare(cfg, untagged, [str(run)], generate=2, bootstrap=50, output_dir=out, progress=False)
    page = (out / "report.html").read_text()
    doc = json.loads((out / "report.json").read_text())["document"]

    def tables(blocks):
        for b in blocks:
            if b["type"] == "section":
                yield from tables(b["blocks"])
            elif b["type"] == "table":
                yield b

    # No task tags: no per-task tables (neither one-row repeats of the summary nor empty ones), and a note why.
    assert all(t["rows"] for t in tables(doc["blocks"]))
    assert "Per task:" not in page and "one task type" in page and not (out / "plots" / "per_task.png").exists()

    # The training curve, from the run's metrics.jsonl.
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    assert validation, "the run must have logged validation losses for this test"
    training = report["training"]["run"]
    assert [r["step"] for r in training["train"]] == [r["step"] for r in train_records]
    assert [v["loss"] for v in training["validation"]] == [v["loss"] for v in validation]
    assert '<h2 id="training">Training</h2>' in page and '<a href="#training">' in page
    assert 'alt="training curve" src="data:image/png;base64,' in page and (out / "plots" / "training_curve.png").is_file()
    summary = next(t for t in tables(doc["blocks"]) if t["title"] == "Training summary")
    best = min(validation, key=lambda v: v["loss"])
    assert summary["rows"] == [
        [
            "run",
            str(train_records[-1]["step"]),
            f"{train_records[0]['loss']:.4f}",
            f"{train_records[-1]['loss']:.4f}",
            f"{best['loss']:.4f} ({best['step']})",
            f"{train_records[-1]['tokens']:,}",
            f"{max(r['lr'] for r in train_records):.3g}",
        ]
    ]
    # Every hyperparameter of the saved config, as saved.
    hyper = {row[0]: row[1] for row in next(t for t in tables(doc["blocks"]) if t["title"] == "Hyperparameters")["rows"]}
    assert hyper["lora.r"] == "4" and float(hyper["lora.alpha"]) == 8 and float(hyper["training.learning_rate"]) == 0.01
    assert hyper["training.eval_every"] == "2" and hyper["model.name"] == str(tiny_llama) and hyper["quantization.bits"] == "0"
    assert "<h3>Hyperparameters</h3>" in page and "<td>training.max_steps</td>" in page


def test_compare_without_a_run_folder_says_so(tiny_llama, run, tmp_path):
    """A plain PEFT folder (no kielo run around it) has no training record: the section says so."""
    import shutil

    plain = tmp_path / "plain" / "adapter"
    plain.mkdir(parents=True)
    for f in run.iterdir():
        if f.name.startswith(("adapter_", "tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, plain / f.name)
    data = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki."}])
    cfg = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0})
    report = compare(cfg, data, [str(plain)], generate=0, bootstrap=20, output_dir=tmp_path / "cmp", progress=False)
    assert report["training"] == {}
    assert "No adapter comes from a kielo run folder" in (tmp_path / "cmp" / "report.html").read_text()


def test_prompt_suite_writes_html_beside_its_markdown(tiny_llama, tmp_path, capsys):
    import yaml

    long_prompt = "Kirjoita " + "pitkä" * 40 + "."
    suite = tmp_path / "pieni.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"prompts": [{"id": "capital", "prompt": "Mikä on Suomen pääkaupunki?"}, {"id": "long", "prompt": long_prompt}]}
        )
    )
    out = tmp_path / "out"
    args = [
        "prompt",
        "--suite",
        str(suite),
        "--model",
        str(tiny_llama),
        "--quantization.bits",
        "0",
        "--generation.max_new_tokens",
        "4",
    ]
    assert main([*args, "--output_dir", str(out)]) == 0
    assert f"{out / 'pieni.md'}, {out / 'pieni.html'}" in capsys.readouterr().err
    page = (out / "pieni.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h2>Summary</h2>" in page and "<h2>Answers</h2>" in page
    answer = json.loads((out / "pieni.jsonl").read_text().splitlines()[0])["answer"]
    # Prompts and answers are text cells that wrap (see test_long_answers_wrap_inside_their_cells).
    assert f'<td class="text">[long] {long_prompt}</td>' in page and f'<td class="text">{escape(answer or "(empty)")}' in page
    # A second run never replaces the first one's files, the HTML included.
    first = (out / "pieni.html").read_bytes()
    assert main([*args, "--output_dir", str(out)]) == 0
    assert (out / "pieni.html").read_bytes() == first and (out / "pieni-2.html").is_file()


def test_merge_writes_an_html_report_beside_its_json(run, tmp_path):
    from kielo.merge.run import HTML_FILE, REPORT_FILE, merge

    out = tmp_path / "merged"
    report = merge(load_config(overrides={"training.device": "cpu"}), str(run), out, dtype="fp32", samples=1, max_new_tokens=4)
    page = (out / HTML_FILE).read_text()
    assert (out / REPORT_FILE).is_file() and HTML_FILE in report["files"]
    assert page.startswith("<!DOCTYPE html>") and f"kielo merge: {out}" in page and "check vs base + adapter: PASS" in page


# --- the demo -------------------------------------------------------------------------------------------


def test_demo_report_links_every_stages_html_report(tiny_llama, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_llama), "--training.max_steps", "2", "--generate", "2", "--generation.max_new_tokens", "4"]
    assert main([*args, "--output_dir", str(out)]) == 0
    md = (out / "report.md").read_text()
    links = dict(re.findall(r"^- ([\w-]+): \[[^\]]+\]\(([^)]+)\)$", md, re.M))
    stages = [s["stage"] for s in json.loads((out / "report.json").read_text())["stages"]]
    assert set(links) == set(stages) == {"analyze-data", "train", "compare", "prompt-suite", "merge"}
    for stage, link in links.items():
        page = out / link
        assert page.suffix == ".html" and page.is_file(), (stage, link)
        assert page.read_text().startswith("<!DOCTYPE html>"), stage
    # The training stage's page: the run's curve and hyperparameters.
    train_page = (out / links["train"]).read_text()
    assert "Training summary" in train_page and "Hyperparameters" in train_page and "lora.r" in train_page
