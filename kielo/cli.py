"""The `kielo` command: a thin dispatch over the library's functions.

Every subcommand takes ``--config FILE`` and dotted overrides of any config key (``--lora.r 8``,
``--training.max_steps=20``); ``--model X`` is short for ``--model.name X``. Command-specific options
are declared per command below. User mistakes print one message and a fix, without a traceback, unless
``--debug`` is given.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from kielo.errors import KieloError

log = logging.getLogger("kielo")

WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


@dataclass
class Command:
    run: Callable[[argparse.Namespace, object], int]
    help: str
    setup: Callable[[argparse.ArgumentParser], None] = lambda p: None
    positional_config: bool = False  # `kielo train CONFIG.yaml` takes the config as a positional argument
    base: Callable[[], dict] | None = None  # the command's own default config (below --config and flags)
    writes_output: bool = True  # output_dir is checked for writing before the command starts
    # The config keys (``output_dir``, ``training.seed``) and whole sections (``data``) the command reads: its
    # --help lists them, so every flag it accepts is documented where it is used.
    config_flags: tuple[str, ...] = ()


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``--a.b value`` / ``--a.b=value`` pairs into a dict; anything else is an error naming it."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise KieloError(f"unexpected argument `{tok}`", "options look like --training.max_steps 20")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or (tokens[i + 1].startswith("--") and len(tokens[i + 1]) > 2):
                raise KieloError(f"option `--{key}` needs a value", f"write --{key} VALUE")
            value = tokens[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def split_config_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate config flags (``--a.b v``, ``--model v``, ``--output_dir v``) from the command's own options.

    Done before argparse, which would otherwise take a config flag's value for a positional argument.
    """
    from kielo.config.load import all_keys

    config_keys = set(all_keys()) | {"model"}
    own, config = [], []
    i = 0
    while i < len(argv):
        tok = argv[i]
        key = tok[2:].split("=", 1)[0] if tok.startswith("--") else None
        if key is not None and ("." in key or key in config_keys):
            config.append(tok)
            if "=" not in tok and i + 1 < len(argv):
                config.append(argv[i + 1])
                i += 1
        else:
            own.append(tok)
        i += 1
    return own, config


def build_config(args: argparse.Namespace, overrides: dict, command: Command):
    from kielo.config.load import given_keys, load_config

    path = getattr(args, "config", None) or getattr(args, "config_file", None)
    config = load_config(path, overrides, base=command.base() if command.base else None)
    args.config_keys = given_keys(path, overrides)  # for commands whose saved run supplies the keys not given
    return config


def _train(args, config) -> int:
    if args.nproc is not None and args.nproc != 1:
        from kielo.train.launch import launch

        return launch(_without_nproc(args.argv), args.nproc)

    from kielo.train.summary import stopped_table, summary_table
    from kielo.train.trainer import train

    summary = train(config, resume=args.resume)
    if not _main_rank():
        return 0  # rank 0 prints (and writes) for the run
    if "stopped" in summary:  # SIGTERM / Ctrl-C: checkpointed at a step boundary, the log says how to go on
        print(stopped_table(summary, str(config.output_dir)))
        return 0
    print(summary_table(summary, str(config.output_dir)))  # the full record is summary.json
    return 0


def _setup_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="data-parallel training in N processes on this machine (one per GPU; gloo on CPU), as torchrun would "
        "start them; each optimizer step's micro-batches are dealt out to them",
    )


def _without_nproc(argv: list[str]) -> list[str]:
    """The train command's arguments without the command's name and ``--nproc N``: what each worker runs."""
    rest = list(argv[argv.index("train") + 1 :])
    for i, tok in enumerate(rest):
        if tok == "--nproc":
            return rest[:i] + rest[i + 2 :]
        if tok.startswith("--nproc="):
            return rest[:i] + rest[i + 1 :]
    return rest


def _main_rank() -> bool:
    """False in the workers of a distributed run other than rank 0 (they neither print nor write)."""
    return os.environ.get("RANK", "0") in ("", "0")


def _demo(args, config) -> int:
    from kielo.demo import run_demo

    return run_demo(
        config, full=args.full, strict=args.strict, generate_n=args.generate, preference=args.preference, given=args.config_keys
    )


def _demo_base() -> dict:
    from kielo.demo import demo_base

    return demo_base()[0]


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="evaluate on every held-out example (the README's evidence)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when the prompt suite fails")
    p.add_argument(
        "--preference",
        action="store_true",
        help="then DPO from the tuned adapter on the bundled Finnish preference pairs (configs/demo_dpo.yaml's recipe) "
        "and SFT vs SFT+DPO on the held-out split, preference accuracy included; timed apart from the usual stages",
    )
    p.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="N",
        help="held-out examples generated on, task-stratified (default 48; --full: all)",
    )


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when first called: a command's own code (and torch) loads only when it runs."""

    def call(*args):
        import importlib

        return getattr(importlib.import_module(module), name)(*args)

    return call


_MODEL_RUN = ("model", "output_dir", "quantization", "data", "generation")

COMMANDS: dict[str, Command] = {
    "train": Command(
        _train,
        "train a LoRA adapter on a (4-bit) base model",
        _setup_train,
        positional_config=True,
        config_flags=("model", "output_dir", "quantization", "lora", "data", "training"),
    ),
    "demo": Command(
        _demo,
        "the whole workflow on the embedded default model, offline",
        _setup_demo,
        base=_demo_base,
        config_flags=("model", "output_dir", "quantization", "lora", "data", "training", "generation"),
    ),
    "prompt": Command(
        _lazy("kielo.prompt.command", "run_command"),
        "answer prompts, compare models side by side, run prompt suites, or chat",
        _lazy("kielo.prompt.command", "setup_parser"),
        base=lambda: {"output_dir": "runs/prompt"},
        config_flags=_MODEL_RUN,
    ),
    "evaluate": Command(
        _lazy("kielo.evaluate.command", "run_evaluate"),
        "loss, generations and metrics of one model (base or base + adapter) on a data set",
        _lazy("kielo.evaluate.command", "setup_evaluate"),
        base=lambda: {"output_dir": "runs/evaluate"},
        config_flags=_MODEL_RUN,
    ),
    "compare": Command(
        _lazy("kielo.evaluate.command", "run_compare"),
        "the base vs each adapter on the same data: deltas with intervals, adapter analysis, HTML report",
        _lazy("kielo.evaluate.command", "setup_compare"),
        base=lambda: {"output_dir": "runs/compare"},
        config_flags=_MODEL_RUN,
    ),
    "analyze-data": Command(
        _lazy("kielo.analyze.command", "run_command"),
        "how the data meets the model's tokenizer: lengths, truncation, masking, padding, duplicates, languages, tokenizer efficiency",
        _lazy("kielo.analyze.command", "setup_parser"),
        base=lambda: {"output_dir": "runs/analyze"},
        config_flags=("model", "output_dir", "data", "training"),
    ),
    "plan": Command(
        _lazy("kielo.plan.command", "run_command"),
        "estimate a training run's peak GPU memory and the micro-batch / checkpointing kielo train would pick",
        _lazy("kielo.plan.command", "setup_parser"),
        writes_output=False,
        config_flags=("model", "quantization", "lora", "data", "training"),
    ),
    "bench": Command(
        _lazy("kielo.bench.command", "run_command"),
        "time QLoRA training of the stock stack and kielo's path on one GPU in one invocation (tokens/s, peak "
        "memory, loss and gradient parity, the memory plan's estimate)",
        _lazy("kielo.bench.command", "setup_parser"),
        writes_output=False,  # writes to --out, not output_dir
    ),
    "merge": Command(
        _lazy("kielo.merge.command", "run_command"),
        "merge an adapter into its unquantized base, verify it, optionally NF4 / GGUF",
        _lazy("kielo.merge.command", "setup_parser"),
        base=lambda: {"output_dir": ""},
        config_flags=("model", "output_dir", "data", "training.device", "training.seed"),
    ),  # "": ADAPTER_OR_RUN_DIR-merged
    "push": Command(
        _lazy("kielo.push.command", "run_command"),
        "upload a run's adapter, model card and optional GGUF to a hub model repository (--dry_run: the plan only)",
        _lazy("kielo.push.command", "setup_parser"),
        writes_output=False,
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse with kielo's error shape: usage, then one ``error:`` line and a ``fix:`` line, status 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"  fix: see `{self.prog} --help`", file=sys.stderr)
        self.exit(2)


def _add_config_flags(p: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    """List the config keys a command reads in its --help (split_config_flags takes them before argparse)."""
    from dataclasses import fields

    from kielo.config.schema import SECTIONS, Config

    if not flags:
        return
    group = p.add_argument_group("config keys this command uses (any key of the config reference is accepted)")
    top = {f.name: f for f in fields(Config)}
    for flag in flags:
        section, _, key = flag.partition(".")
        if key:
            f = next(g for g in fields(SECTIONS[section]) if g.name == key)
            group.add_argument(f"--{flag}", metavar="V", default=argparse.SUPPRESS, help=f.metadata["help"])
        elif section in SECTIONS:
            if section == "model":
                name = next(g for g in fields(SECTIONS["model"]) if g.name == "name")
                group.add_argument("--model", metavar="NAME", default=argparse.SUPPRESS, help="--model.name: " + name.metadata["help"])
            keys = ", ".join(g.name for g in fields(SECTIONS[section]))
            group.add_argument(
                f"--{section}.KEY", metavar="V", default=argparse.SUPPRESS, help=f"{top[section].metadata['help']} Keys: {keys}."
            )
        else:
            group.add_argument(f"--{flag}", metavar="V", default=argparse.SUPPRESS, help=top[flag].metadata["help"])


def make_parser() -> argparse.ArgumentParser:
    """The `kielo` parser; ``parser.commands`` maps each command's name to its own parser."""
    parser = Parser(prog="kielo", description="QLoRA instruction fine-tuning, Finnish first.", allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parser.commands = {}  # type: ignore[attr-defined]
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=cmd.help,
            description=cmd.help,
            allow_abbrev=False,
            epilog="Any config key is also an option: --lora.r 8 --training.max_steps 20 "
            "(see the README's config reference); --model X is --model.name X. Options are written with "
            "underscores; dashes work too (--gpu-memory is --gpu_memory).",
        )
        parser.commands[name] = p  # type: ignore[attr-defined]
        if cmd.positional_config:
            p.add_argument("config_file", nargs="?", help="YAML config file")
        p.add_argument("--config", help="YAML config file")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        cmd.setup(p)
        _add_config_flags(p, cmd.config_flags)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command's arguments and the config flags and unknown options left over.

    The command's own parser reads its arguments intermixed, so positional arguments may come before, between
    or after options (``kielo plan --gpu_memory 24 cfg.yaml``); config flags are taken out first, as argparse
    would otherwise take a config flag's value for a positional argument.
    """
    own, config_flags = split_config_flags(argv)
    at = next((i for i, tok in enumerate(own) if not tok.startswith("-")), None)
    if at is None or own[at] not in COMMANDS:
        args, rest = parser.parse_known_args(own)  # no command: the top-level help, or argparse's error for a wrong one
        return args, rest + config_flags
    top = parser.parse_args(own[:at])
    args, rest = parser.commands[own[at]].parse_known_intermixed_args(own[at + 1 :])  # type: ignore[attr-defined]
    args.command = own[at]
    args.debug = getattr(args, "debug", False) or top.debug
    return args, rest + config_flags


def setup_logging(debug: bool) -> None:
    # In a distributed run only rank 0 tells the story; the others speak up for warnings and errors.
    level = logging.DEBUG if debug else logging.INFO if _main_rank() else logging.WARNING
    prefix = "kielo" if _main_rank() else f"kielo[rank {os.environ['RANK']}]"
    logging.basicConfig(level=level, format=prefix + ": %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "peft", "accelerate", "bitsandbytes", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)
    if not debug:
        import warnings

        # Deprecation notices from the libraries' internals are not the user's to act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from kielo.flags import underscore_options

    argv = underscore_options(list(sys.argv[1:] if argv is None else argv))
    parser = make_parser()
    args, rest = parse_command_line(parser, argv)
    debug = getattr(args, "debug", False) or "--debug" in argv
    setup_logging(debug)
    if not args.command:
        parser.print_help()
        return 2
    command = COMMANDS[args.command]
    args.argv = argv
    try:
        if not debug:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        config = build_config(args, parse_overrides(rest), command)
        if command.writes_output and config.output_dir:
            from kielo.output import check_output_dir

            check_output_dir(config.output_dir)
        return command.run(args, config)
    except KieloError as e:
        if debug:
            raise
        if not _main_rank():
            return 2  # rank 0 prints the same message
        print(f"kielo {args.command}: error: {e.message}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    except OSError as e:
        # A write that fails mid-run (folder made read-only, quota): the path and the reason, not a traceback.
        if debug or e.errno not in WRITE_ERRNOS:
            raise
        print(f"kielo {args.command}: error: can't write {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        print("  fix: free space or make that folder writable, or pass another --output_dir", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kielo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
