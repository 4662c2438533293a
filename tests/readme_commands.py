"""The README's shell examples as data: every command of its fenced shell blocks, and a runner that runs a
``kielo`` command as written on a tiny model (tests/test_readme_commands.py uses both).

A command is run exactly as the README writes it, with two substitutions and one addition: a base model the
README names (a hub id or the default alias) becomes the tiny test model, and so does the default model where
none is named; the README's relative paths stay relative to a working folder laid out like the repository
(its ``configs/``, ``data/`` and ``prompts/`` linked in), so ``runs/...`` is written there; and a few
budget flags (``--training.max_steps 2``...) are appended, which override the README's values because a
later flag wins. Any flag the README spells differently from the CLI still reaches the CLI, so it fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Fenced blocks in these languages hold shell commands; ```console blocks mark commands with a `$ ` prompt.
SHELL_LANGUAGES = {"bash", "sh", "shell", "zsh", "console", "shell-session"}
PROMPTED = {"console", "shell-session"}
# Shell syntax the runner does not interpret: a README line with it must be split up or listed as not run.
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}
# The repository folders the README's relative paths name (configs/demo.yaml, data/fi_instruct/..., prompts/...).
LINKED = ("configs", "data", "prompts")
# Appended to each command so it runs in seconds on the tiny model; flags given later override earlier ones.
BUDGET = {
    "train": ["--training.max_steps", "2", "--training.gradient_accumulation", "1"],
    "demo": ["--training.max_steps", "2", "--generate", "4", "--generation.max_new_tokens", "8"],
    "evaluate": ["--generate", "4", "--generation.max_new_tokens", "8"],
    "compare": ["--generate", "4", "--generation.max_new_tokens", "8"],
    "prompt": ["--generation.max_new_tokens", "8"],
}
# Scripts whose arguments go unchanged to a kielo command (checked against the script's own text).
WRAPPERS = {"bench/run_qlora_bench.sh": ("bench", 'python3 -m kielo bench "$@"')}


@dataclass(frozen=True)
class ReadmeCommand:
    """One command line of a fenced shell block: its text without the comment, its README line, its words."""

    text: str
    line: int
    words: tuple[str, ...]


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` outside quotes, at the start or after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(markdown: str) -> list[ReadmeCommand]:
    """Every command in ``markdown``'s fenced shell blocks, in order; continuation lines (``\\``) joined."""
    commands: list[ReadmeCommand] = []
    language = None  # the open block's language; None outside a block
    pending, start = "", 0
    for number, raw in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w-]*)", raw)
        if fence:
            language = None if language is not None else fence.group(1).lower()
            continue
        if language not in SHELL_LANGUAGES:
            continue
        line = raw.strip()
        if not pending:
            if line.startswith(("$ ", "% ")):
                line = line[2:]
            elif language in PROMPTED:
                continue  # a console block's output
            start = number
        line = strip_comment(line)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            commands.append(ReadmeCommand(text, start, tuple(shlex.split(text))))
    return commands


def kielo_args(words: tuple[str, ...]) -> list[str] | None:
    """The arguments after ``kielo`` (or ``python -m kielo``); None when the line runs another program."""
    if words[:1] == ("kielo",):
        return list(words[1:])
    if len(words) >= 3 and re.fullmatch(r"python(3(\.\d+)?)?", words[0]) and words[1:3] == ("-m", "kielo"):
        return list(words[3:])
    return None


def forwarded_kielo_args(words: tuple[str, ...]) -> list[str] | None:
    """For a wrapper script of :data:`WRAPPERS` (``[VAR=v...] bash SCRIPT ARGS``), the kielo command it runs."""
    words = tuple(w for i, w in enumerate(words) if not (re.fullmatch(r"\w+=.*", w) and all("=" in v for v in words[:i])))
    if len(words) >= 2 and words[0] == "bash" and words[1] in WRAPPERS:
        command, line = WRAPPERS[words[1]]
        assert line in (ROOT / words[1]).read_text(), f"{words[1]} no longer runs `{line}`"
        return [command, *words[2:]]
    return None


def subcommand(args: list[str]) -> str | None:
    """The kielo command an argument list runs (its first word that is not an option)."""
    return next((a for a in args if not a.startswith("-")), None)


def as_run(args: list[str], model: Path, cwd: Path) -> list[str]:
    """``args`` as the test runs them: the base model made ``model``, the budget flags appended.

    A ``--model`` value that names a folder in ``cwd`` (a run an earlier README command trained) is kept.
    """
    out, named = list(args), False
    for i, tok in enumerate(out):
        key, eq, value = tok.partition("=")
        if key in ("--model", "--model.name"):
            named = True
            if eq and not (cwd / value).exists():
                out[i] = f"{key}={model}"
            elif not eq and i + 1 < len(out) and not (cwd / out[i + 1]).exists():
                out[i + 1] = str(model)
    if not named:
        out += ["--model", str(model)]
    return out + BUDGET.get(subcommand(args) or "", [])


def workdir(path: Path) -> Path:
    """``path`` laid out like the repository root for the README's relative paths; what they write lands here."""
    path.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        (path / name).symlink_to(ROOT / name, target_is_directory=True)
    return path


def run_kielo(args: list[str], model: Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``kielo ARGS`` (through :func:`as_run`) in a fresh process in ``cwd``, as a user's shell would."""
    if OPERATORS & set(args):
        raise ValueError(f"`kielo {shlex.join(args)}` has shell operators: split it into plain commands")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TQDM_DISABLE": "1", **(env or {})}
    argv = [sys.executable, "-m", "kielo", *as_run(args, model, cwd)]
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def check_parses(args: list[str]) -> None:
    """Everything ``kielo ARGS`` checks before it starts work (flags, config keys and values, bench cases),
    without running it: for the README's commands that need a GPU. Raises what the CLI would report."""
    from kielo.cli import COMMANDS, build_config, make_parser, parse_command_line, parse_overrides
    from kielo.flags import underscore_options

    namespace, rest = parse_command_line(make_parser(), underscore_options(list(args)))  # argparse: SystemExit(2)
    build_config(namespace, parse_overrides(rest), COMMANDS[namespace.command])
    if namespace.command == "bench":
        from kielo.bench.cases import PRODUCT, parse_cases
        from kielo.bench.multigpu import check_entries

        entries = parse_cases(namespace.cases, PRODUCT)
        if namespace.nproc > 1:
            check_entries(entries, namespace.nproc)
