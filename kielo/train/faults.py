"""Named moments of a training run where a fault can be injected on purpose, to prove what survives it.

``KIELO_FAULT=POINT[@N][:ACTION][,...]`` acts the N-th time (default the first) the run reaches POINT:

- ``kill``: SIGKILL this process (the machine went away; nothing runs after it), the default;
- ``pause``: stop there until a signal arrives (another process can look at the folder, or send SIGTERM);
- ``term``: send this process SIGTERM (a scheduler's polite stop, at a known moment);
- ``enospc`` / ``erofs``: raise the OSError a full disk or a read-only folder raises;
- ``nan`` / ``poison`` (at ``step``): returned to the caller: ``nan`` makes the step's gradients NaN (a bad
  batch), ``poison`` a weight NaN right after the update (a bad update: the next step's loss shows it).

Unset, every point costs one dictionary lookup. The hook exists for tests and for users who want to see for
themselves what a kill at a given moment does.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time

log = logging.getLogger(__name__)

ENV = "KIELO_FAULT"

# Every point the training run passes, in the order it passes them.
POINTS = {
    "data": "after the data is read, before it is encoded",
    "step": "inside a step, after backward, before the optimizer update (@1: the first step)",
    "between-steps": "after a step (and its checkpoint), before the next step starts",
    "checkpoint-adapter": "inside a checkpoint write, the adapter written, nothing else yet",
    "checkpoint-side-files": "inside a checkpoint write, adapter and tokenizer/config written, no trainer state",
    "checkpoint-state": "inside a checkpoint write, while the trainer state file is written",
    "checkpoint-rename": "a complete checkpoint in its temporary folder, before the rename into place",
    "checkpoint-renamed": "just after the rename, before older checkpoints are pruned",
    "prune": "in the middle of removing an old checkpoint",
    "evaluate": "inside a validation pass, after its first batch",
    "final-save": "in the middle of moving the final adapter files into the output folder",
    "summary": "the final adapter in place, before summary.json is written",
}
ACTIONS = ("kill", "pause", "term", "enospc", "erofs", "nan", "poison")

_reached: dict[str, int] = {}
_counting: list[str] = [""]  # the spec the counts belong to: a new spec (a test's next run) counts anew


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    wanted = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, _, action = item.partition(":")
        point, _, nth = where.partition("@")
        action = action or "kill"
        if point not in POINTS or action not in ACTIONS or (nth and not nth.isdigit()):
            raise ValueError(f"{ENV}={spec!r}: {item!r} is not POINT[@N][:ACTION]; points: {', '.join(POINTS)}; actions: {ACTIONS}")
        wanted[point] = (int(nth or 1), action)
    return wanted


def fault_point(point: str, path: str | os.PathLike | None = None) -> str | None:
    """Act here when ``KIELO_FAULT`` names ``point`` (and this is its N-th pass); ``path`` is the file an I/O
    fault pretends to fail on. Returns the action the caller carries out itself (``nan``, ``poison``), else
    None."""
    assert point in POINTS, point
    spec = os.environ.get(ENV)
    if not spec:
        return None
    if _counting[0] != spec:
        _counting[0] = spec
        _reached.clear()
    _reached[point] = _reached.get(point, 0) + 1
    nth, action = _parse(spec).get(point, (0, ""))
    if _reached[point] != nth:
        return None
    log.warning("%s: %s at %s (pass %d)", ENV, action, point, nth)
    sys.stderr.flush()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "pause":
        _pause(point)
    elif action in ("enospc", "erofs"):
        code = errno.ENOSPC if action == "enospc" else errno.EROFS
        raise OSError(code, os.strerror(code), str(path) if path is not None else None)
    return action if action in ("nan", "poison") else None


def _pause(point: str) -> None:
    """Sleep until a signal handler has run (or an hour has passed): time.sleep returns early only when a
    handler raises, so poll in short naps and compare the handled-signal count."""
    from kielo.train import interrupt

    print(f"{ENV}: paused at {point}, pid {os.getpid()}", file=sys.stderr, flush=True)
    seen = interrupt.signals_seen()
    deadline = time.monotonic() + 3600
    while interrupt.signals_seen() == seen and time.monotonic() < deadline:
        time.sleep(0.05)
