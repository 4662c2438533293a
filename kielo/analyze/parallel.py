"""Run independent pieces of an analysis on several cores.

Workers are forked so they inherit the loaded tokenizer and examples instead of unpickling them; a task
names its input by position (split, start, end) and only its results travel back. Where fork is not
available, or the work is small enough that starting workers costs more than it saves, tasks run in
this process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from kielo.errors import KieloError

log = logging.getLogger(__name__)

# Below this many examples a pool costs more (forking, sending results back) than it saves.
MIN_PARALLEL_EXAMPLES = 4000

_STATE: dict[str, Any] = {}


def state() -> dict[str, Any]:
    """What the current analysis shared with its workers (set by :func:`run_tasks`)."""
    return _STATE


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _call(fn: Callable, args: tuple) -> Any:
    # KieloError does not survive pickling with its fix intact; send its parts back instead.
    try:
        return "ok", fn(*args)
    except KieloError as e:
        return "error", (e.message, e.fix)


def run_tasks(tasks: list[tuple[Callable, tuple]], shared: dict[str, Any], workers: int, examples: int) -> list:
    """``[fn(*args) for fn, args in tasks]``, in worker processes when that pays.

    The functions are module-level and read ``shared`` through :func:`state`; ``examples`` (how much work
    there is) decides whether a pool is worth starting.
    """
    _STATE.clear()
    _STATE.update(shared)
    try:
        use_pool = workers > 1 and len(tasks) > 1 and examples >= MIN_PARALLEL_EXAMPLES
        if use_pool and "fork" not in mp.get_all_start_methods():
            log.debug("no fork on this platform: analysing in one process")
            use_pool = False
        if not use_pool:
            results = [_call(fn, args) for fn, args in tasks]
        else:
            # Forked children must not use the tokenizers library's thread pool if the parent already
            # did (it would deadlock); setting the variable keeps the library from warning about it.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("fork")) as pool:
                results = list(pool.map(_call, *zip(*tasks, strict=True)))
    finally:
        _STATE.clear()
    out = []
    for status, value in results:
        if status == "error":
            raise KieloError(*value)
        out.append(value)
    return out
