"""`kielo train --nproc N`: start N training processes on this machine as one torch.distributed run.

Each process is ``python -m kielo train`` with the same arguments (the multi-GPU bench starts its workers the
same way, :func:`launch_processes`) and the environment ``torchrun`` gives its workers (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so the training code is the same under
``torchrun -m kielo train`` and ``accelerate launch -m kielo train``. Like torchrun's agent, the launcher ends
the others when one process fails (a rank that died leaves the rest waiting in a collective) and exits with
the worst status; SIGTERM is passed on, so every rank checkpoints at the same step boundary. Ctrl-C reaches
the ranks from the terminal directly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from kielo.errors import KieloError

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nothing listens on now, for the rendezvous of rank 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The environment of worker ``rank`` of ``nproc``: what torchrun sets for a single-machine run."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def launch(argv: list[str], nproc: int) -> int:
    """Run ``kielo train ARGV`` in ``nproc`` processes; returns 0 when all succeed, else the first failure's
    exit status (128 + N for a process killed by signal N)."""
    if nproc < 1:
        raise KieloError(f"--nproc {nproc} is not a number of processes", "give --nproc 2 or more (1 trains in this process)")
    return launch_processes([sys.executable, "-m", "kielo", "train", *argv], nproc)


def launch_processes(cmd: list[str], nproc: int, timeout: float | None = None, label: str = "training") -> int:
    """Run ``cmd`` in ``nproc`` processes as ranks 0 .. nproc-1 of one run on this machine; the exit status as
    :func:`launch` returns it, 124 (as ``timeout`` exits) when they run past ``timeout`` seconds and are ended."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise KieloError("--nproc inside a distributed launch (WORLD_SIZE is set)", "drop --nproc under torchrun or accelerate launch")
    port = free_port()
    procs = [subprocess.Popen(cmd, env=os.environ | worker_env(rank, nproc, port)) for rank in range(nproc)]
    deadline = None if timeout is None else time.monotonic() + timeout
    log.info("started %d %s processes (pids %s)", nproc, label, ", ".join(str(p.pid) for p in procs))

    def forward(signum, frame) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward), signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        failed = None
        while any(p.poll() is None for p in procs):
            bad = next((p for p in procs if p.poll() not in (None, 0)), None)
            if bad is not None and failed is None:
                failed = bad
                log.warning("process %d ended with status %s: stopping the others", bad.pid, _exit_status(bad.returncode))
                for p in procs:
                    if p.poll() is None:
                        p.kill()  # waiting in a collective for the rank that is gone; nothing to save
            if deadline is not None and time.monotonic() > deadline and failed is None:
                log.warning("processes still running after %.0f s: stopping them", timeout)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                return 124
            time.sleep(0.2)
        failed = failed or next((p for p in procs if p.returncode), None)
        return _exit_status(failed.returncode) if failed is not None else 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
