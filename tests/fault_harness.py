"""Run `kielo train` in child processes that a fault can kill, cheaply.

Each run is a separate process running ``kielo.cli.main`` (what ``python -m kielo train`` runs), forked from
a multiprocessing fork server that has imported torch, transformers and kielo once: a kill -9 kills that
run only, and a run costs its model load and steps instead of several seconds of imports. The fork server
itself never computes, so no thread pool is forked mid-use.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(["torch", "transformers", "peft", "bitsandbytes", "kielo.cli", "kielo.train.trainer"])


def _child(argv: list[str], env: dict, log_path: str) -> None:
    os.environ.pop("KIELO_FAULT", None)
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from kielo.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class Run:
    code: int  # exit status; -9 when killed by SIGKILL
    log: str
    pid: int


def start(argv: list[str], log_path: Path, fault: str | None = None):
    """Start ``kielo`` with ``argv`` (``KIELO_FAULT=fault``); returns the process (``.join()`` / ``.pid``)."""
    env = {"KIELO_FAULT": fault} if fault else {}
    p = _ctx.Process(target=_child, args=(argv, env, str(log_path)))
    p.start()
    return p


def kielo(argv: list[str], log_path: Path, fault: str | None = None, timeout: float = 300) -> Run:
    """Run ``kielo`` with ``argv`` to its end (or its kill) and return how it ended and what it logged."""
    p = start(argv, log_path, fault)
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise TimeoutError(f"kielo {argv} did not end in {timeout}s:\n{log_path.read_text()}")
    return Run(p.exitcode, log_path.read_text(encoding="utf-8", errors="replace"), p.pid)


def train_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]
