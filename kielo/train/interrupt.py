"""SIGTERM and Ctrl-C during training: finish the current step, checkpoint, stop cleanly.

A scheduler (or a cloud machine going away) sends SIGTERM and waits a little before SIGKILL; a user presses
Ctrl-C. Stopping in the middle of a step would lose the step and could tear a file, so the handler only
records the request and the loop checks it at the next step boundary. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"requested": None, "seen": 0}


def signals_seen() -> int:
    """How many stop signals have been handled so far (lets a paused fault point wake up on one)."""
    return _state["seen"]


def stop_requested() -> str | None:
    """The name of the signal that asked the run to stop (``SIGTERM``, ``SIGINT``), or None."""
    return _state["requested"]


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    _state["seen"] += 1
    if _state["requested"] == "SIGINT" and name == "SIGINT":
        raise KeyboardInterrupt  # asked twice: the user does not want to wait for the step
    _state["requested"] = name


@contextlib.contextmanager
def stop_at_step_boundary():
    """Within this block SIGTERM and SIGINT request a stop instead of killing the run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["requested"] = None
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["requested"] = None
