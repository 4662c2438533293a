"""The README's shell examples run as written: every ``kielo`` command of its fenced shell blocks runs here,
in README order, on a tiny model (tests/readme_commands.py says what is substituted); every other command
line is listed in NOT_RUN with the reason, and every entry of these lists must still be in the README.

The README's ```python block is run as written, on the default model, by tests/test_real_model.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PAIRS, ROWS
from readme_commands import (
    README,
    check_parses,
    forwarded_kielo_args,
    kielo_args,
    run_kielo,
    shell_commands,
    workdir,
)

from kielo.errors import KieloError

GPU = "needs CUDA (bitsandbytes' GPU kernels, bf16 timing); its arguments are checked against kielo's parser here"
# Command lines of the README that this test does not run, and why.
NOT_RUN = {
    "make demo": "set-up (a venv and pip installs) and then `kielo demo` on the real default model, 15 min; the "
    "`kielo demo` line runs here on the tiny model and tests/test_real_model.py runs the demo on the default model",
    "make test": "runs the test suite this test is part of",
    "bash bench/run_gpu_tests.sh": "needs CUDA: runs the tests marked gpu (tests/test_gpu.py)",
    "bash bench/run_qlora_bench.sh --shape llama8b "
    '--cases "stock:a,b kielo:a,b,a/nogc kielo+nooffload:a kielo+bnbdequant:a kielo+sdpa:b"': GPU,
    'WHL=".whl .whl2" bash bench/run_qlora_bench.sh --shape llama8b '
    '--cases "=stock:a,b unsloth:a,b unsloth+nogc:a unsloth+packed:b"': GPU,
    'bash bench/run_qlora_bench.sh --shape gemma1b --cases "stock:a,b kielo:a,b"': GPU,
    'bash bench/run_qlora_bench.sh --nproc 2 --shape llama8b --cases "kielo:a"': (
        "needs 2 GPUs (one per process, nccl); tests/test_bench_multigpu.py runs the same bench in 2 processes on CPU "
        "with the tiny shape, and its arguments are checked against kielo's parser here"
    ),
    "kielo train configs/demo.yaml --nproc 2 --training.distributed fsdp --training.gradient_accumulation 2 --output_dir runs/fsdp": (
        "this runner's budget sets --training.gradient_accumulation 1, which 2 processes cannot split; "
        "tests/test_fsdp_train.py runs an fsdp run in 2 processes on the tiny model"
    ),
    "kielo train configs/demo.yaml --nproc 2 --training.gradient_accumulation 2 --training.max_steps 2 --output_dir runs/ddp": (
        "this runner's budget sets --training.gradient_accumulation 1, which 2 processes cannot split; "
        "tests/test_distributed.py runs `kielo train --nproc 2` on the tiny model"
    ),
    "torchrun --nproc-per-node 2 -m kielo train configs/demo.yaml --training.gradient_accumulation 2 --output_dir runs/ddp-torchrun": (
        "the same workers as the `kielo train --nproc 2` line, started by torchrun (tests/test_distributed.py runs them "
        "with torchrun's environment)"
    ),
    "accelerate launch --num_processes 2 -m kielo train configs/demo.yaml --training.gradient_accumulation 2 "
    "--output_dir runs/ddp-accelerate": "the same workers started by accelerate launch, which sets torchrun's environment",
    "kielo train configs/demo.yaml --data.train LumiOpen/instruction-collection-fin --output_dir runs/hub": (
        "needs the hub (no network here); tests/test_data_sources.py reads save_to_disk folders, checks the offline error"
    ),
    "mlflow ui --backend-store-uri runs/tracked/mlruns": "a web server; tests/test_trackers.py reads the store with mlflow's client",
    "kielo push runs/try --repo my-org/kielo-try --private": "uploads: needs a network and a hub token (the --dry_run line runs)",
    "kielo merge runs/try --output_dir runs/try-gguf --gguf q8_0": "the README's runs use the tiny Gemma fixture, whose "
    "attention layout GGUF can't express (kielo merge refuses it before any work); tests/test_gguf_llama_cpp.py and "
    "tests/test_merge.py run --gguf on tiny models that GGUF can hold",
    "make llama-cpp": "builds llama.cpp (about 25 minutes on 2 cores); tests/test_gguf_llama_cpp.py uses that build when it is there",
    "ollama create kielo-try -f runs/try-gguf/Modelfile.q8_0": "needs Ollama, which is not installed here; the Modelfile's "
    "template is checked against the trained one by kielo merge itself",
    "kielo compare --model runs/try --data data/fi_instruct/test.jsonl --harness fin-bench --harness_include finbench_v2 "
    "--output_dir runs/try-finbench": "needs the Hugging Face hub (FIN-bench-v2's data) and the fork's task YAMLs; "
    "tests/test_presets.py runs the preset on local task YAMLs",
    "kielo compare --model runs/try --data data/fi_instruct/test.jsonl --euroeval fi --output_dir runs/try-euroeval": "needs "
    "the euroeval package and the Hugging Face hub (its data); tests/test_presets.py checks the one-line refusal without them",
}
# Files the README's commands take from the user: written into the working folder before the commands run.
USER_FILES = {
    "my.jsonl": ROWS * 4,
    "pairs.jsonl": PAIRS * 3,
    "qa.jsonl": [{"question": r["instruction"], "answer": r["output"]} for r in ROWS if "instruction" in r] * 4,
}
# Environment of one command. The first `kielo train configs/demo.yaml` is stopped by a SIGTERM after its
# first step (what Ctrl-C does: a checkpoint, exit 0), so the `--resume` line after it has a run to continue.
ENV = {"kielo train configs/demo.yaml": {"KIELO_FAULT": "between-steps@1:term"}}


QA_LINE = (
    'kielo train configs/demo.yaml --data.train qa.jsonl --data.columns "{question: instruction, answer: output}" --output_dir runs/qa'
)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


# What a command must have done besides exiting 0 (the working folder is the argument).
CHECKS = {
    "kielo train configs/demo.yaml": lambda w: not (w / "runs/demo/summary.json").exists() and (w / "runs/demo/checkpoints").is_dir(),
    "kielo train configs/demo.yaml --resume": lambda w: _summary(w / "runs/demo")["steps"] == 2,
    "kielo train configs/demo.yaml --training.max_steps 20 --lora.r 8 --output_dir runs/try": lambda w: (
        json.loads((w / "runs/try/adapter_config.json").read_text())["r"] == 8
    ),
    "kielo train --model LumiOpen/Viking-7B --data.train my.jsonl --output_dir runs/viking": lambda w: (
        _summary(w / "runs/viking")["steps"] == 2
    ),
    "kielo compare --model runs/try --data data/fi_instruct/test.jsonl --output_dir runs/try-compare": lambda w: (
        w / "runs/try-compare/report.html"
    ).is_file(),
    "kielo merge runs/try --output_dir runs/try-merged": lambda w: (w / "runs/try-merged/config.json").is_file(),
    "kielo train --data.train pairs.jsonl --training.objective dpo --lora.init_from runs/try --output_dir runs/try-dpo": lambda w: (
        (w / "runs/try-dpo/reference_logps.pt").is_file()
        and _summary(w / "runs/try-dpo")["preference"]["train_last"] is not None
        # the SFT run's prompt format (configs/demo.yaml: builtin), not `auto`'s pick for the tokenizer
        and _summary(w / "runs/try-dpo")["template"] == _summary(w / "runs/try")["template"]
    ),
    "kielo demo": lambda w: (w / "runs/demo-2/report.md").is_file(),
    "kielo compare --model runs/try --adapter runs/try-dpo --data data/fi_instruct/test.jsonl --preference_data pairs.jsonl "
    "--generation.batch_size 8 --generation.stop '[\"\\n###\"]' --output_dir runs/try-dpo-compare": lambda w: (
        json.loads((w / "runs/try-dpo-compare/report.json").read_text())["preference"]["models"]["try-dpo"]["accuracy"] is not None
    ),
    "kielo demo --preference": lambda w: "dpo-compare" in json.loads((w / "runs/demo-3/report.json").read_text())["results"],
    QA_LINE: lambda w: _summary(w / "runs/qa")["train_examples"] == 16,
    "kielo train configs/demo.yaml --data.train my.jsonl --data.streaming true --output_dir runs/stream": lambda w: (
        _summary(w / "runs/stream")["stream_position"]["cursor"] == 2
    ),
    'kielo train configs/demo.yaml --training.report_to "[mlflow, tensorboard]" --output_dir runs/tracked': lambda w: (
        (w / "runs/tracked/mlruns").is_dir() and (w / "runs/tracked/tensorboard").is_dir()
    ),
}


def stale_entries(commands, *tables: dict) -> list[str]:
    """Keys of ``tables`` that no README command has (a command text, or a file name a command uses)."""
    texts = {c.text for c in commands}
    words = {w for c in commands for w in c.words}
    return [key for table in tables for key in table if key not in texts and key not in words]


def unlisted(commands) -> list[str]:
    """README command lines that are neither a kielo command (run here) nor in NOT_RUN."""
    return [f"README.md:{c.line}: {c.text}" for c in commands if kielo_args(c.words) is None and c.text not in NOT_RUN]


PLANTED = """Some text.

```bash
kielo train configs/demo.yaml \\
    --lora.r 8   # a continued line, a comment
echo "# not a comment" # but this is
```

```console
$ kielo plan --gpu_memory 24 configs/demo.yaml
output line, not a command
```

```python
kielo = "not shell"
```

```
kielo train untyped-block.yaml
```
"""


def test_the_extractor_reads_shell_blocks_only():
    commands = shell_commands(PLANTED)
    assert [(c.line, c.text) for c in commands] == [
        (4, "kielo train configs/demo.yaml --lora.r 8"),
        (6, 'echo "# not a comment"'),
        (10, "kielo plan --gpu_memory 24 configs/demo.yaml"),
    ]
    assert kielo_args(commands[0].words) == ["train", "configs/demo.yaml", "--lora.r", "8"]
    assert kielo_args(("python", "-m", "kielo", "demo")) == ["demo"] and kielo_args(commands[1].words) is None
    assert unlisted(commands) == ['README.md:6: echo "# not a comment"']
    assert stale_entries(commands, {"kielo demo": "x", "configs/demo.yaml": "y"}) == ["kielo demo"]


def test_every_readme_command_is_run_or_listed_with_a_reason():
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert any(kielo_args(c.words) for c in commands), "the README has kielo commands in shell blocks"
    assert not unlisted(commands), "README commands neither run nor in NOT_RUN:\n" + "\n".join(unlisted(commands))
    stale = stale_entries(commands, NOT_RUN, USER_FILES, ENV, CHECKS)
    assert not stale, f"no longer in the README's shell blocks (update the test's tables): {stale}"


def test_the_gpu_commands_parse():
    """The README's bench lines can't run on a CPU, but their flags, config keys and cases must be kielo's."""
    checked = 0
    for command in shell_commands(README.read_text(encoding="utf-8")):
        args = kielo_args(command.words) or forwarded_kielo_args(command.words)
        if command.text in NOT_RUN and args is not None:
            check_parses(args)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    "args, error",
    [
        (["bench", "--shape", "llama8b", "--cases", "stok:a"], KieloError),  # a variant that does not exist
        (["bench", "--shap", "llama8b"], KieloError),  # a flag that does not exist
        (["bench", "--shape", "llama9b"], SystemExit),  # a value argparse refuses
        (["bench", "--nproc", "2", "--cases", "stock:a"], KieloError),  # a variant the multi-GPU bench does not time
    ],
)
def test_check_parses_refuses_what_the_cli_refuses(args, error):
    with pytest.raises(error):
        check_parses(args)


@pytest.mark.parametrize(
    "line, message",
    [
        ("kielo train configs/demo.yaml --training.max_stepz 20", "did you mean `training.max_steps`"),
        ("kielo train configs/demo.yaml --resum", "--resum"),
        ("kielo evaluate --model runs/none --dataa x.jsonl", "--dataa"),
    ],
)
def test_the_runner_fails_on_a_flag_the_cli_does_not_accept(line, message, tiny_gemma, tmp_path):
    (command,) = shell_commands(f"```bash\n{line}\n```\n")
    result = run_kielo(kielo_args(command.words), tiny_gemma, workdir(tmp_path / "w"))
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.slow
def test_the_readme_commands_run_as_written(tiny_gemma, tmp_path):
    """Each kielo command of the README's shell blocks, in README order, in one working folder (a later
    command uses the runs an earlier one wrote)."""
    work = workdir(tmp_path / "repo")
    for name, rows in USER_FILES.items():
        (work / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    failures, ran = [], 0
    for command in shell_commands(README.read_text(encoding="utf-8")):
        args = kielo_args(command.words)
        if args is None or command.text in NOT_RUN:
            continue
        result = run_kielo(args, tiny_gemma, work, ENV.get(command.text))
        ran += 1
        if result.returncode != 0:
            failures.append(f"README.md:{command.line}: `{command.text}` exited {result.returncode}:\n{result.stderr[-2000:]}")
        elif command.text in CHECKS and not CHECKS[command.text](work):
            failures.append(f"README.md:{command.line}: `{command.text}` exited 0 but did not do what it says")
    assert ran >= 6
    assert not failures, "\n\n".join(failures)
