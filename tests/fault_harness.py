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
    if env.get(AUDIT_ENV):
        _audit_writes(env[AUDIT_ENV], env[AUDIT_ENV + "_UNDER"])
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from kielo.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


AUDIT_ENV = "KIELO_TEST_AUDIT"
_WRITE_EVENTS = {"os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate"}


def _audit_writes(record: str, under: str) -> None:
    """Append to ``record`` every file-system change this process asks Python for under ``under`` (an
    audit hook: opens for writing, renames, removals, new folders)."""
    import sys as _sys

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            paths = [path] if writes else []
        elif event in _WRITE_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, os.PathLike))]
        else:
            return
        for p in paths:
            if str(p).startswith(under):
                with open(record, "a", encoding="utf-8") as f:  # outside ``under``: not recorded again
                    f.write(f"pid {os.getpid()} {event} {p}\n")

    _sys.addaudithook(hook)


def distributed_env(rank: int, n: int, port: int) -> dict[str, str]:
    """What torchrun gives worker ``rank`` of ``n`` on one machine."""
    from kielo.train.launch import worker_env

    return worker_env(rank, n, port)


def ranks(argv: list[str], n: int, log_dir: Path, fault: str | None = None, env: dict | None = None, timeout: float = 300):
    """Run ``kielo`` with ``argv`` as ``n`` ranks of one gloo group (as torchrun would start them); like
    torchrun's agent, the others are killed once one fails. Returns each rank's :class:`Run`."""
    import time

    from kielo.train.launch import free_port

    port = free_port()
    procs = []
    for r in range(n):
        e = distributed_env(r, n, port) | (env or {}).get(r, {})
        if fault:
            e["KIELO_FAULT"] = fault
        p = _ctx.Process(target=_child, args=(argv, e, str(log_dir / f"rank{r}.log")))
        p.start()
        procs.append(p)
    deadline = time.time() + timeout
    while any(p.exitcode is None for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                if p.exitcode is None:
                    p.kill()
        if time.time() > deadline:
            for p in procs:
                p.kill()
            raise TimeoutError(f"kielo {argv} in {n} ranks did not end in {timeout}s")
        time.sleep(0.05)
    for p in procs:
        p.join()
    return [
        Run(p.exitcode, (log_dir / f"rank{r}.log").read_text(encoding="utf-8", errors="replace"), p.pid) for r, p in enumerate(procs)
    ]


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
