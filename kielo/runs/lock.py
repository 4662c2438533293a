"""One training run at a time in a run folder.

The lock is ``output_dir/.kielo.lock``, held with ``flock`` for the life of the run: the kernel releases it
when the process dies, however it dies, so a kill -9 never leaves a lock that blocks the next run (the file
stays, naming the dead holder; a run that ends any other way removes it). The file
names the holder (pid, host, start time) for the message a second run gets, and for noticing that a lock
was left behind by a process that is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from kielo.errors import KieloError
from kielo.runs.writes import writing

log = logging.getLogger(__name__)

LOCK_FILE = ".kielo.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold ``out``'s lock while the block runs; a second run into the same folder is refused at once.

    The lock file is removed on release (and ``out`` too when this call created it and the run left it
    empty), so a run that fails before writing anything leaves the folder as it was."""
    created = not out.exists()
    with writing(out, f"the run's lock file {LOCK_FILE}"):
        out.mkdir(parents=True, exist_ok=True)
        fd = _acquire(out)
    try:
        old = _read_holder(fd)
        if old.get("pid") and not (old.get("host") == socket.gethostname() and _pid_alive(int(old["pid"]))):
            log.info(
                "%s: the lock of pid %s on %s was left behind by a run that is gone; taking it over", out, old["pid"], old.get("host")
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            # Unlinked while still held: a run that opened the old file meanwhile finds it gone (see _acquire).
            (out / LOCK_FILE).unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
    finally:
        os.close(fd)


def _acquire(out: Path) -> int:
    """Open and flock ``out``'s lock file; a KieloError naming the holder when another run has it.

    The holder removes the file on release, so a flock can land on a file already unlinked: then the path
    names another file (or none) and the lock guards nothing; open the path again."""
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
            raise KieloError(
                f"{out} is in use by another `kielo train` ({who})",
                "wait for that run to finish or stop it, or choose another --output_dir",
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
