"""The command line's rules: one flag spelling (underscores, dashes accepted), positional arguments anywhere,
and every command's --help listing every flag the command accepts or reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import kielo
from kielo.cli import COMMANDS, main, make_parser, parse_command_line, split_config_flags
from kielo.config.load import load_config
from kielo.flags import underscore_options

PACKAGE = Path(kielo.__file__).parent


def parse(*argv: str) -> tuple[argparse.Namespace, list[str]]:
    return parse_command_line(make_parser(), underscore_options(list(argv)))


def test_dashes_and_underscores_are_one_spelling():
    for spelling in ("--gpu_memory", "--gpu-memory"):
        args, rest = parse("plan", spelling, "24", "cfg.yaml")
        assert (args.gpu_memory, args.config_file, rest) == (24.0, "cfg.yaml", []), spelling
    for spelling in ("--warmup_a", "--warmup-a"):
        args, _ = parse("bench", spelling, "5", "--examples-per-step=7")
        assert (args.warmup_a, args.examples_per_step) == (5, 7)
    _, rest = parse("train", "--training.max-steps", "3", "--output-dir=o")
    own, config = split_config_flags(rest)
    assert own == [] and config == ["--training.max_steps", "3", "--output_dir=o"]
    # Values are never rewritten: a dash inside a value stays.
    assert underscore_options(["--lora.target_modules", "all-linear", "--", "--x-y"]) == [
        "--lora.target_modules",
        "all-linear",
        "--",
        "--x-y",
    ]


def test_positional_arguments_go_anywhere():
    assert parse("plan", "cfg.yaml", "--gpu_memory", "24")[0].config_file == "cfg.yaml"
    assert parse("plan", "--gpu_memory", "24", "cfg.yaml")[0].config_file == "cfg.yaml"
    args, rest = parse("prompt", "first", "--greedy", "second", "--model", "m", "third")
    assert args.prompt == ["first", "second", "third"] and args.greedy and rest == ["--model", "m"]
    args, _ = parse("--debug", "train", "--resume", "cfg.yaml")
    assert args.debug and args.resume and args.config_file == "cfg.yaml"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_the_underscore_spelling_only(name):
    for action in make_parser().commands[name]._actions:
        for option in action.option_strings:
            assert "-" not in option.lstrip("-"), f"kielo {name} declares {option}: declare options with underscores"


def _config_reads(name: str) -> set[str]:
    """The config keys a command's entry modules read (``config.output_dir``, ``config.data.train``)."""
    folder = {"analyze-data": "analyze", "compare": "evaluate"}.get(name, name)
    files = [PACKAGE / "demo.py"] if name == "demo" else [PACKAGE / folder / f for f in ("command.py", "run.py")]
    if name == "train":
        files = [PACKAGE / "cli.py", PACKAGE / "train" / "trainer.py"]
    pattern = re.compile(r"\bconfig\.(model|quantization|lora|data|training|generation|output_dir)(?:\.([a-z_]+))?")
    reads = set()
    for f in files:
        if f.is_file():
            reads |= {f"{s}.{k}" if k else s for s, k in pattern.findall(f.read_text(encoding="utf-8"))}
    return reads


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_lists_every_flag_it_accepts(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    shown = set(re.findall(r"(?<![\w.-])--[\w.]+", capsys.readouterr().out))
    parser = make_parser().commands[name]
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            assert set(action.option_strings) <= shown | {"-h"}, action.option_strings
    for key in sorted(_config_reads(name)):
        section = key.split(".")[0]
        listed = {f"--{key}", f"--{section}.KEY"} | ({"--model"} if key == "model.name" else set())
        assert listed & shown, f"kielo {name} reads config.{key} but its --help lists none of {sorted(listed)}"


def test_merge_help_lists_output_dir(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    out = capsys.readouterr().out
    assert "--output_dir" in out and "--model" in out


def test_listed_config_flags_still_set_the_config():
    _, rest = parse("merge", "adapter", "--output_dir", "out", "--model", "m")
    from kielo.cli import parse_overrides

    cfg = load_config(None, parse_overrides(rest))
    assert cfg.output_dir == "out" and cfg.model.name == "m"
