"""`kielo prompt`: the command-line face of :mod:`kielo.prompt` (options, printing, exit codes).

    kielo prompt --model BASE [--adapter DIR]... ["PROMPT"... | --file F | --suite S.yaml | --chat]

With ``--adapter`` the base and each adapter answer side by side; without, the one model answers. Answers
are printed (a lone answer as plain text, several as columns) and, except in the chat, written to
``<output_dir>/<name>.jsonl`` and ``.md`` (``output_dir`` defaults to ``runs/prompt``; ``<name>`` is the
suite's or file's name, or ``prompts``, numbered ``<name>-2``... when an earlier call's files are there) with
the resolved config. A suite exits with status 1
when the last-named model fails any check, so it can gate a CI job.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import fields, replace
from pathlib import Path

from kielo.config.schema import GenerationConfig
from kielo.errors import KieloError
from kielo.runs.saved import is_run_folder

log = logging.getLogger(__name__)

SUITE_FAILED = 1


def setup_parser(p: argparse.ArgumentParser) -> None:
    """The command's own options; generation flags take their help from the schema (one source of truth)."""
    p.add_argument("prompt", nargs="*", help="prompt text; each argument is one prompt")
    src = p.add_argument_group("what to ask (one of)")
    src.add_argument("--file", help="prompts from a .txt (blank-line separated), .yaml/.json or .jsonl file")
    src.add_argument("--suite", help="a prompt test suite (YAML with expectations), e.g. prompts/fi_suite.yaml")
    src.add_argument("--chat", action="store_true", help="interactive chat with history and streamed answers")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="DIR",
        help="a LoRA adapter or kielo run folder; repeat to compare several side by side with the base",
    )
    p.add_argument("--system", help="system prompt (short for --data.system_prompt)")
    gen = p.add_argument_group(
        "generation (short for --generation.KEY; default: the training run's generation.* when "
        "--model/--adapter is a run folder, else the config)"
    )
    gen.add_argument("--greedy", action="store_true", help="greedy decoding (temperature 0)")
    for f in fields(GenerationConfig):
        if f.name == "stop":
            gen.add_argument("--stop", action="append", metavar="TEXT", help=f.metadata["help"] + " Repeatable.")
        else:
            gen.add_argument(f"--{f.name}", metavar="V", help=f.metadata["help"])


def _flags(args: argparse.Namespace) -> dict:
    flags = {f.name: getattr(args, f.name) for f in fields(GenerationConfig) if getattr(args, f.name, None) is not None}
    if args.greedy:
        flags["temperature"] = 0
    return flags


def _source_count(args: argparse.Namespace) -> int:
    return sum(bool(x) for x in (args.prompt, args.file, args.suite, args.chat))


def _print_results(run, lone: bool) -> None:
    from kielo.prompt.report import answers_table, summary_table

    if lone:
        print(run.answers[run.models[0]][0].text)
        return
    print(answers_table(run, shutil.get_terminal_size((120, 24)).columns))
    if run.suite is not None:
        print()
        print(summary_table(run))


def _base_from_runs(config, adapters: list[str]):
    """Check every ``--adapter`` before a model loads; without ``--model``, use the base their runs trained on.

    ``model.name`` still at its default means no base was named (a named default and the runs' own base
    agree or the adapters can't load anyway); the runs' saved configs then name the base, so the default
    model is not loaded only to be refused as the wrong base.
    """
    from kielo.config.schema import ModelConfig
    from kielo.model.source import resolve_adapter

    runs = [(path, run) for path, run in (resolve_adapter(a) for a in adapters) if run]
    bases = {(run.get("model") or {}).get("name") for _, run in runs} - {None}
    if config.model.name != ModelConfig().name or not bases or bases == {config.model.name}:
        return config
    if len(bases) > 1:
        raise KieloError(
            f"the adapters were trained on different base models ({', '.join(sorted(bases))})",
            "pass the base with --model, and adapters trained on it",
        )
    config = replace(config, model=replace(config.model, name=bases.pop()))
    log.info("base model from the training run %s: %s", Path(runs[0][0]), config.model.name)
    return config


def run_command(args: argparse.Namespace, config) -> int:
    """Run `kielo prompt`; returns the exit status."""
    from kielo.config.load import save_config
    from kielo.prompt.report import write_outputs
    from kielo.prompt.run import load_models, run_prompts, run_suite
    from kielo.prompt.settings import describe, resolve_generation
    from kielo.prompt.sources import from_arguments, read_prompt_file
    from kielo.prompt.suite import load_suite

    if _source_count(args) != 1:
        raise KieloError(
            "give exactly one of: prompt text, --file, --suite or --chat",
            'e.g. kielo prompt --model gemma-3-270m "Mikä on Suomen pääkaupunki?"',
        )
    folder = Path(config.output_dir)
    if is_run_folder(folder):
        # Writing kielo_config.yaml there would replace the training run's own.
        raise KieloError(
            f"output_dir {folder} is a training run folder", "write prompt results elsewhere, e.g. --output_dir runs/prompt"
        )
    # Read the prompts before loading any model, so a bad file fails in a second.
    suite = load_suite(args.suite) if args.suite else None
    if suite is not None:
        prompts = suite.prompts
    elif not args.chat:
        prompts = read_prompt_file(args.file) if args.file else from_arguments(args.prompt)
    if args.system is not None:
        config = replace(config, data=replace(config.data, system_prompt=args.system or None))
    config = _base_from_runs(config, args.adapter)
    gen = resolve_generation(config.generation, [config.model.name, *args.adapter], _flags(args))
    config = replace(config, generation=gen)
    bundle, models = load_models(config, args.adapter)
    system = bundle.config.data.system_prompt  # a run folder's own system prompt applies unless --system is given
    log.info("models: %s; %s", ", ".join(models), describe(gen))

    if args.chat:
        from kielo.prompt.chat import run_chat

        return run_chat(bundle, models, gen, system)

    run = run_suite(bundle, models, suite, gen, system) if suite else run_prompts(bundle, models, prompts, gen, system)
    lone = suite is None and len(models) == 1 and len(run.prompts) == 1
    _print_results(run, lone)
    stem = Path(args.suite or args.file or "prompts").stem
    title = f"kielo prompt: {suite.name if suite else stem}"
    paths = write_outputs(run, folder, stem, title)
    save_config(config, folder)
    print(f"written: {', '.join(map(str, paths))}", file=sys.stderr)
    if suite is None:
        return 0
    last = models[-1]
    ok = run.all_passed(last)
    print(f"{'PASS' if ok else 'FAIL'}: {last} passed {run.passed(last)}/{len(run.prompts)} prompts of {suite.name}")
    return 0 if ok else SUITE_FAILED
