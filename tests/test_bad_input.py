"""Bad input at scale: every command, given a user mistake, exits 2 with one ``error:`` line naming the problem
and a ``fix:`` line, shows no traceback, and leaves what is already in the output folder untouched.

Each case runs ``kielo.cli.main`` in-process on the tiny fixture model, on CPU. Most fail before any model
loads; the damaged-adapter cases prove the adapter file is checked before the base model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROWS, tiny_config

from kielo.cli import main

GOOD_ROW = json.dumps(ROWS[0], ensure_ascii=False)
CHAT_EMPTY = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}
CPU = ["--training.device", "cpu"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


# Setups: each takes the case's folder and writes what the case's arguments name.
def bad_data(name: str, text: str | bytes):
    return lambda d: write(d / name, text)


def damage_run(how):
    """Copy the trained run into the case's folder as `run` and damage it with ``how(run)``."""

    def setup(d: Path) -> None:
        how(d / "run")

    setup.needs_run = True
    return setup


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # a fragment of the error line
    setup: object = None


LATIN1 = jsonl(
    {"instruction": "Good morning", "output": "Hyvaa huomenta"}, {"instruction": "Mikä on pääkaupunki?", "output": "Helsinki"}
).encode("latin-1")

CASES = [
    # --- train: config files, keys, values, types ---
    Case("train-config-missing", ["train", "{d}/nope.yaml"], "config file {d}/nope.yaml does not exist"),
    Case("train-config-bad-yaml", ["train", "{d}/c.yaml"], "is not valid YAML", bad_data("c.yaml", "lora: [r: 8\n")),
    Case("train-config-not-mapping", ["train", "{d}/c.yaml"], "must hold a mapping", bad_data("c.yaml", "- a\n- b\n")),
    Case(
        "train-config-not-utf8",
        ["train", "{d}/c.yaml"],
        "is not UTF-8 text",
        bad_data("c.yaml", "output_dir: r\xe4\n".encode("latin-1")),
    ),
    Case("train-config-unknown-key", ["train", "{d}/c.yaml"], "lora.rank", bad_data("c.yaml", "lora:\n  rank: 8\n")),
    Case("train-unknown-flag", ["train", "--lora.rr", "8"], "unknown option `--lora.rr`"),
    Case(
        "train-flag-dashes", ["train", "--training.max-stepz", "3"], "unknown option `--training.max_stepz`"
    ),  # dashes are underscores
    Case("train-flag-no-value", ["train", "--data.train", "{data}", "--lora.r"], "needs a value"),
    Case("train-stray-argument", ["train", "{d}/c.yaml", "extra"], "unexpected argument `extra`", bad_data("c.yaml", "{}\n")),
    Case("train-bad-type", ["train", "--lora.r", "abc"], "lora.r"),
    Case("train-zero-rank", ["train", "--lora.r", "0"], "lora.r"),
    Case("train-negative-lr", ["train", "--training.learning_rate", "-1"], "training.learning_rate"),
    Case("train-bad-choice", ["train", "--data.overlong", "chop"], "data.overlong"),
    Case("train-split-over-one", ["train", "--data.validation_split", "1.5"], "data.validation_split"),
    Case("train-bad-bits", ["train", "--quantization.bits", "3"], "quantization.bits"),
    Case("train-resume-with-value", ["train", "--resume=yes", "--data.train", "{data}"], "--resume"),
    # --- train: models ---
    Case(
        "train-model-missing", ["train", "--model", "/nope/model", "--data.train", "{data}"], "model path /nope/model does not exist"
    ),
    Case(
        "train-model-empty-folder", ["train", "--model", "{d}/m", "--data.train", "{data}"], "not a model", lambda d: (d / "m").mkdir()
    ),
    Case(
        "train-model-bad-name", ["train", "--model", "not a model!", "--data.train", "{data}"], "neither an existing path nor a hub id"
    ),
    # --- train: data files and rows ---
    Case("train-no-data", ["train", "--model", "{model}"], "no training data"),
    Case("train-data-missing", ["train", "--data.train", "{d}/nope.jsonl"], "data file {d}/nope.jsonl does not exist"),
    Case("train-data-folder", ["train", "--data.train", "{d}"], "is a folder, not a data file"),
    Case("train-data-suffix", ["train", "--data.train", "{d}/d.txt"], "unsupported file type .txt", bad_data("d.txt", "x\n")),
    Case("train-data-empty", ["train", "--data.train", "{d}/d.jsonl"], "holds no examples", bad_data("d.jsonl", "\n\n")),
    Case(
        "train-data-bad-json",
        ["train", "--data.train", "{d}/d.jsonl"],
        "d.jsonl:2: malformed JSON",
        bad_data("d.jsonl", GOOD_ROW + '\n{"a": \n'),
    ),
    Case(
        "train-data-not-object",
        ["train", "--data.train", "{d}/d.jsonl"],
        "d.jsonl:1: expected a JSON object",
        bad_data("d.jsonl", "[1, 2]\n"),
    ),
    Case(
        "train-data-json-not-list", ["train", "--data.train", "{d}/d.json"], "expected a list of examples", bad_data("d.json", '"x"')
    ),
    Case(
        "train-data-no-output-key",
        ["train", "--data.train", "{d}/d.jsonl"],
        "missing field(s) output",
        bad_data("d.jsonl", jsonl({"instruction": "a"})),
    ),
    Case(
        "train-output-null",
        ["train", "--data.train", "{d}/d.jsonl"],
        "d.jsonl:2: `output` is null",
        bad_data("d.jsonl", jsonl(GOOD_ROW, {"instruction": "a", "output": None})),
    ),
    Case(
        "train-output-empty",
        ["train", "--data.train", "{d}/d.jsonl"],
        "d.jsonl:1: `output` is empty",
        bad_data("d.jsonl", jsonl({"instruction": "a", "output": "  "})),
    ),
    Case(
        "train-output-number",
        ["train", "--data.train", "{d}/d.jsonl"],
        "field `output` is not a string",
        bad_data("d.jsonl", jsonl({"instruction": "a", "output": 5})),
    ),
    Case(
        "train-answer-holds-end-token",
        ["train", "--model", "{model}", "--data.train", "{d}/d.jsonl"],
        "contains the end token '<eos>'",
        bad_data("d.jsonl", jsonl({"instruction": "a", "output": "b<eos>c"})),
    ),
    Case(
        "train-chat-empty-answer",
        ["train", "--data.train", "{d}/d.jsonl"],
        "message 1 (assistant) is empty",
        bad_data("d.jsonl", jsonl(CHAT_EMPTY)),
    ),
    Case(
        "train-chat-ends-with-user",
        ["train", "--data.train", "{d}/d.jsonl"],
        "last message is not from the assistant",
        bad_data("d.jsonl", jsonl({"messages": [{"role": "user", "content": "a"}]})),
    ),
    Case(
        "train-chat-bad-role",
        ["train", "--data.train", "{d}/d.jsonl"],
        "has role 'bot'",
        bad_data("d.jsonl", jsonl({"messages": [{"role": "bot", "content": "a"}]})),
    ),
    Case(
        "train-chat-not-list",
        ["train", "--data.train", "{d}/d.jsonl"],
        "`messages` must be a non-empty list",
        bad_data("d.jsonl", jsonl({"messages": "hei"})),
    ),
    Case(
        "train-csv-open-quote",
        ["train", "--data.train", "{d}/d.csv"],
        "d.csv:2: the row ends before field(s) output",
        bad_data("d.csv", 'instruction,output\n"a,b\nc,d\n'),
    ),
    Case(
        "train-csv-extra-field",
        ["train", "--data.train", "{d}/d.csv"],
        "d.csv:2: 3 fields",
        bad_data("d.csv", "instruction,output\na,b,c\n"),
    ),
    Case("train-data-not-utf8", ["train", "--data.train", "{d}/d.jsonl"], "d.jsonl:2: not valid UTF-8", bad_data("d.jsonl", LATIN1)),
    Case(
        "train-validation-missing", ["train", "--data.train", "{data}", "--data.validation", "{d}/v.jsonl"], "v.jsonl does not exist"
    ),
    # --- output folders ---
    Case(
        "train-output-is-file",
        ["train", "--data.train", "{data}", "--output_dir", "{d}/f"],
        "output_dir {d}/f is a file",
        bad_data("f", "x"),
    ),
    Case(
        "train-output-under-file",
        ["train", "--data.train", "{data}", "--output_dir", "{d}/f/run"],
        "{d}/f is a file",
        bad_data("f", "x"),
    ),
    Case("train-output-read-only", ["train", "--data.train", "{data}", "--output_dir", "{readonly}/run"], "is not writable"),
    # --- analyze-data ---
    Case("analyze-no-files", ["analyze-data", "--model", "{model}"], "required"),
    Case("analyze-data-missing", ["analyze-data", "{d}/nope.jsonl", "--model", "{model}"], "nope.jsonl does not exist"),
    Case(
        "analyze-data-not-utf8",
        ["analyze-data", "{d}/d.jsonl", "--model", "{model}"],
        "d.jsonl:2: not valid UTF-8",
        bad_data("d.jsonl", LATIN1),
    ),
    Case(
        "analyze-data-bad-json",
        ["analyze-data", "{d}/d.jsonl", "--model", "{model}"],
        "d.jsonl:2: malformed JSON",
        bad_data("d.jsonl", GOOD_ROW + "\n{\n"),
    ),
    Case(
        "analyze-output-is-file",
        ["analyze-data", "{data}", "--model", "{model}", "--output_dir", "{d}/f"],
        "is a file",
        bad_data("f", "x"),
    ),
    # --- evaluate / compare ---
    Case("evaluate-no-data", ["evaluate", "--model", "{model}"], "no evaluation data"),
    Case("evaluate-data-missing", ["evaluate", "--model", "{model}", "--data", "{d}/nope.jsonl"], "nope.jsonl does not exist"),
    Case(
        "evaluate-adapter-missing",
        ["evaluate", "--model", "{model}", "--adapter", "{d}/nope", "--data", "{data}"],
        "adapter {d}/nope does not exist",
    ),
    Case(
        "evaluate-adapter-not-adapter",
        ["evaluate", "--model", "{model}", "--adapter", "{d}", "--data", "{data}"],
        "holds no LoRA adapter",
    ),
    Case(
        "evaluate-adapter-truncated",
        ["evaluate", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "{d}/run/adapter_model.safetensors is damaged",
        damage_run(lambda run: truncate(run / "adapter_model.safetensors")),
    ),
    Case(
        "evaluate-run-as-model-garbage",
        ["evaluate", "--model", "{d}/run", "--data", "{data}"],
        "{d}/run/adapter_model.safetensors is damaged",
        damage_run(lambda run: write(run / "adapter_model.safetensors", b"garbage" * 100)),
    ),
    Case("evaluate-negative-generate", ["evaluate", "--model", "{model}", "--data", "{data}", "--generate", "-1"], "is negative"),
    Case(
        "compare-adapter-truncated",
        ["compare", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "adapter_model.safetensors is damaged",
        damage_run(lambda run: truncate(run / "adapter_model.safetensors")),
    ),
    Case(
        "compare-adapter-config-garbage",
        ["compare", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "{d}/run/adapter_config.json is damaged",
        damage_run(lambda run: write(run / "adapter_config.json", "{not json")),
    ),
    Case(
        "compare-adapter-weights-missing",
        ["compare", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "no adapter_model.safetensors",
        damage_run(lambda run: (run / "adapter_model.safetensors").unlink()),
    ),
    Case(
        "compare-run-config-garbage",
        ["compare", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "kielo_config.yaml is damaged",
        damage_run(lambda run: write(run / "kielo_config.yaml", "model: [\n")),
    ),
    Case(
        "compare-run-config-not-kielo",
        ["compare", "--model", "{model}", "--adapter", "{d}/run", "--data", "{data}"],
        "kielo_config.yaml is not a kielo config",
        damage_run(lambda run: write(run / "kielo_config.yaml", "- model\n- name\n")),
    ),
    Case(
        "evaluate-run-as-model-config-scalar-model",
        ["evaluate", "--model", "{d}/run", "--data", "{data}"],
        "kielo_config.yaml is not a kielo config",
        damage_run(lambda run: write(run / "kielo_config.yaml", "model: gemma\n")),
    ),
    # --- prompt ---
    Case("prompt-no-source", ["prompt", "--model", "{model}"], "give exactly one of"),
    Case("prompt-file-missing", ["prompt", "--model", "{model}", "--file", "{d}/nope.txt"], "nope.txt"),
    Case(
        "prompt-adapter-garbage",
        ["prompt", "--adapter", "{d}/run", "hei"],
        "{d}/run/adapter_model.safetensors is damaged",
        damage_run(lambda run: write(run / "adapter_model.safetensors", b"\x08" + b"\x00" * 7 + b"{}")),
    ),
    Case(
        "prompt-into-run-folder",
        ["prompt", "--model", "{model}", "hei", "--output_dir", "{d}/run"],
        "is a training run folder",
        damage_run(lambda run: None),
    ),
    Case("prompt-bad-max-new-tokens", ["prompt", "--model", "{model}", "hei", "--max_new_tokens", "lots"], "max_new_tokens"),
    # --- merge ---
    Case("merge-adapter-missing", ["merge", "{d}/nope", "--output_dir", "{d}/m"], "adapter {d}/nope does not exist"),
    Case(
        "merge-adapter-truncated",
        ["merge", "{d}/run", "--output_dir", "{d}/m"],
        "{d}/run/adapter_model.safetensors is damaged",
        damage_run(lambda run: truncate(run / "adapter_model.safetensors")),
    ),
    Case(
        "merge-output-is-file",
        ["merge", "{d}/run", "--output_dir", "{d}/f"],
        "is a file",
        damage_run(lambda run: write(run.parent / "f", "x")),
    ),
    Case("merge-bad-dtype", ["merge", "{d}/run", "--dtype", "int8"], "invalid choice: 'int8'", damage_run(lambda run: None)),
    # --- plan / bench / demo ---
    Case("plan-config-missing", ["plan", "{d}/nope.yaml", "--gpu-memory", "24"], "does not exist"),
    Case("plan-bad-mode", ["plan", "--mode", "bogus"], "invalid choice: 'bogus'"),
    Case("plan-tiny-gpu", ["plan", "--gpu-memory", "0.01"], "too small to train on"),
    Case("plan-unknown-key", ["plan", "--gpu-memory", "24", "--training.micro_batch", "2"], "unknown option"),
    Case("bench-bad-shape", ["bench", "--shape", "nope"], "invalid choice: 'nope'"),
    Case("bench-bad-batch", ["bench", "--batch", "two"], "invalid int value"),
    Case("demo-bad-generate", ["demo", "--generate", "many"], "invalid int value"),
    Case("demo-unknown-key", ["demo", "--lora.rank", "8"], "unknown option `--lora.rank`"),
    Case("no-such-command", ["fly"], "invalid choice: 'fly'"),
]


@pytest.fixture(scope="module")
def trained_run(tiny_llama, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input-run")
    data = write(tmp / "train.jsonl", jsonl(*ROWS * 4))
    from kielo.train.trainer import train

    out = tmp / "run"
    train(tiny_config(tiny_llama, data, out, quantization={"bits": 0}, training={"max_steps": 1, "device": "cpu"}), progress=False)
    return out


@pytest.fixture(scope="module")
def readonly(tmp_path_factory):
    """A folder no file can be made in: root ignores permission bits, so as root a folder of /sys."""
    if os.geteuid() != 0:
        folder = tmp_path_factory.mktemp("read-only")
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    for candidate in (Path("/sys/kernel"), Path("/sys")):
        try:
            with open(candidate / ".kielo-probe", "w"):
                pass
        except OSError:
            yield candidate
            return
    pytest.skip("no read-only folder to test with on this machine")


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.expect for c in CASES}) >= 40
    assert {c.argv[0] for c in CASES} >= {"train", "analyze-data", "evaluate", "compare", "prompt", "merge", "plan", "bench", "demo"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_message(case: Case, request, tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command's default output folder lands in the case's own folder
    d = tmp_path / "case"
    d.mkdir()
    if getattr(case.setup, "needs_run", False):
        shutil.copytree(request.getfixturevalue("trained_run"), d / "run")
    if case.setup:
        case.setup(d)
    data = write(tmp_path / "good.jsonl", jsonl(*ROWS * 2))
    out = write(tmp_path / "out" / "earlier.txt", "an earlier result").parent
    values = {"d": d, "model": tiny_llama, "data": data, "out": out}
    if "{readonly}" in " ".join(case.argv):
        values["readonly"] = request.getfixturevalue("readonly")
    argv = [a.format(**values) for a in case.argv]
    if argv[0] not in ("plan", "bench", "demo", "fly") and "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    if argv[0] in ("train", "evaluate", "compare", "prompt", "merge", "analyze-data"):
        argv += CPU
    before = {p: digest(p) for p in (d, out)}

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors exit
        code = e.code
    err = capsys.readouterr().err

    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert case.expect.format(**values) in errors[0], err
    assert any(line.strip().startswith("fix:") for line in err.splitlines()), err
    assert {p: digest(p) for p in (d, out)} == before, "a failed command changed files that were there"
