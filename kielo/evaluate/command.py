"""The ``kielo evaluate`` and ``kielo compare`` command lines: options, checks, and what is printed.

Kept apart from :mod:`kielo.evaluate.run` (the library) so building the CLI parser imports no model code
(only numpy, for the one default of the bootstrap).
"""

from __future__ import annotations

import argparse

from kielo.errors import KieloError
from kielo.evaluate.stats import DEFAULT_RESAMPLES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="FILE",
        help="evaluation data: any training format; rows without answers are allowed (scored without "
        "references). Default: data.validation of the config",
    )
    p.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="generate on N examples spread evenly over task types (default: all); the loss always covers every example",
    )
    p.add_argument("--no_generate", action="store_true", help="loss only: no generation and no answer metrics")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (default: %(default)s)",
    )
    p.add_argument(
        "--harness",
        metavar="TASK[,TASK]",
        help="also run these lm-evaluation-harness tasks, or a preset: fin-bench (FIN-bench-v2: cf formulation for a base "
        "model, mcf for an instruction-tuned one), fin-bench-cf, fin-bench-mcf; needs `pip install lm_eval[hf]`, "
        "the tasks' data from the Hugging Face hub or local files, and for FIN-bench-v2 its task YAMLs (--harness_include)",
    )
    p.add_argument("--harness_limit", type=int, metavar="N", help="examples per harness task (default: all)")
    p.add_argument("--harness_include", metavar="DIR", help="folder of extra harness task YAMLs (e.g. with local data)")


def setup_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        metavar="DIR",
        help="LoRA adapter, checkpoint or run folder to put on the base (default: the base alone, or the "
        "adapter of a run folder given as --model)",
    )
    _common(p)


def setup_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--euroeval",
        metavar="LANG",
        choices=("fi",),
        help="also run EuroEval's datasets of this language (fi) on the base and each adapter; needs `pip install euroeval` "
        "and the Hugging Face hub; written to OUTPUT/euroeval.json",
    )
    p.add_argument(
        "--adapter",
        metavar="DIR",
        action="append",
        default=[],
        help="an adapter, checkpoint or run folder to compare with the base; repeat for more",
    )
    p.add_argument(
        "--checkpoints",
        action="store_true",
        help="learning curve: also evaluate the loss of every checkpoint of each run folder among the adapters",
    )
    p.add_argument(
        "--preference_data",
        metavar="FILE",
        help="held-out preference pairs (chosen/rejected rows, as training.objective dpo reads them): each model's "
        "preference accuracy, reward margin and answer log-probabilities, DPO's implicit reward against the base",
    )
    p.add_argument(
        "--beta",
        type=float,
        metavar="B",
        help="beta of the implicit reward on --preference_data (default: the compared DPO runs' training.beta, else 0.1)",
    )
    _common(p)


def _options(args, config) -> dict:
    from kielo.evaluate.harness import HarnessOptions
    from kielo.extras import require

    if args.no_generate and args.generate is not None:
        raise KieloError("--generate and --no_generate contradict each other", "keep one of them")
    if args.generate is not None and args.generate < 0:
        raise KieloError(f"--generate {args.generate} is negative", "give a number of examples >= 0")
    if args.bootstrap < 1:
        raise KieloError(f"--bootstrap {args.bootstrap} is too small", "use e.g. --bootstrap 1000")
    data = args.data or config.data.validation
    if not data:
        raise KieloError("no evaluation data", "pass --data FILE, e.g. --data data/fi_instruct/test.jsonl")
    harness = None
    if args.harness:
        from kielo.evaluate.presets import FIN_BENCH, check_hub, is_preset

        require("lm_eval", "--harness (lm-evaluation-harness)")  # before any model loads or loss pass
        harness = HarnessOptions([t.strip() for t in args.harness.split(",") if t.strip()], args.harness_limit, args.harness_include)
        if is_preset(harness.tasks):
            # fin-bench's formulation is picked once the model is known: either set on local files will do.
            name = harness.tasks[0]
            candidates = list(FIN_BENCH.values()) if name == "fin-bench" else [FIN_BENCH[name.rsplit("-", 1)[1]]]
            check_hub(f"--harness {name}", candidates, args.harness_include)
    if getattr(args, "euroeval", None):
        from kielo.evaluate.presets import check_hub

        require("euroeval", "--euroeval (EuroEval)")
        check_hub(f"--euroeval {args.euroeval}")
    # The run's saved generation settings apply, except those given by --config or a --generation.* flag.
    chosen = [key.partition(".")[2] for key in getattr(args, "config_keys", ()) if key.startswith("generation.")]
    return {
        "data": data,
        "generate": 0 if args.no_generate else args.generate,
        "bootstrap": args.bootstrap,
        "harness": harness,
        "chosen_generation": chosen,
    }


def _preference_options(args) -> dict:
    """--preference_data and --beta, checked before any model loads (a bad row is an error naming it)."""
    if args.beta is not None and not args.beta > 0:
        raise KieloError(f"--beta {args.beta} is not positive", "give the implicit reward's beta, e.g. --beta 0.1")
    if args.preference_data is None:
        if args.beta is not None:
            raise KieloError("--beta is used only with --preference_data", "add --preference_data FILE, or drop --beta")
        return {}
    from kielo.data.preference import load_pairs

    load_pairs(args.preference_data, given_with="--preference_data")
    return {"preference_data": args.preference_data, "beta": args.beta}


def _generation_line(report: dict) -> str:
    """The settings the answers were generated with, and where each came from."""
    settings, template = report["settings"], report["model"]["template"]
    return f"generation: {settings['generation_text']}; template {template} (from {settings['generation_source']['template_from']})"


def _line(name: str, m: dict) -> str:
    def pct(v):
        return "—" if v is None else f"{v:.0%}"

    loss = "—" if m["loss"] is None else f"{m['loss']:.4f}"
    chrf = "—" if m["chrf"] is None else f"{m['chrf']:.1f}"
    return (
        f"{name}: loss {loss}, chrF {chrf}, task success {pct(m['task_success'])}, ended {pct(m['end_token'])}, "
        f"expected language {pct(m['expected_language'])}"
    )


def _euroeval(args, config, report: dict) -> None:
    """EuroEval on the base and each adapter, written beside the comparison report."""
    import json
    from pathlib import Path

    from kielo.evaluate.presets import run_euroeval

    out = Path(report["files"]["html"]).parent
    models = {"base": report["model"]["path"], **{Path(a).name: a for a in args.adapter}}
    found = run_euroeval(models, args.euroeval, out)
    (out / "euroeval.json").write_text(json.dumps(found, indent=2, ensure_ascii=False), encoding="utf-8")
    for name, scores in found["results"].items():
        print(f"EuroEval {args.euroeval} {name}: {len(scores)} datasets ({out / 'euroeval.json'})")


def run_evaluate(args, config) -> int:
    from kielo.evaluate.run import evaluate

    report = evaluate(config, adapter=args.adapter, **_options(args, config))
    print(_generation_line(report))
    for name, m in report["summary"]["models"].items():
        print(_line(name, m))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"report: {report['files']['markdown']}")
    return 0


def run_compare(args, config) -> int:
    from kielo.evaluate.preference_report import terminal_lines
    from kielo.evaluate.run import compare

    report = compare(
        config, adapters=args.adapter, checkpoints=args.checkpoints, **_options(args, config), **_preference_options(args)
    )
    if args.euroeval:
        _euroeval(args, config, report)
    summary = report["summary"]
    print(_generation_line(report))
    for name, m in summary["models"].items():
        print(_line(name, m))
    for name, deltas in summary["deltas"].items():
        parts = []
        for key in ("loss", "chrf", "task_success"):
            d = deltas.get(key)
            if d:
                scale = 100 if key == "task_success" else 1
                parts.append(f"{key} {d['delta'] * scale:+.3g} [{d['low'] * scale:+.3g}, {d['high'] * scale:+.3g}]")
        print(f"{name} - base: {', '.join(parts) or 'no shared measurements'}")
    for line in terminal_lines(summary.get("preference")):
        print(line)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"report: {report['files']['html']}")
    return 0
