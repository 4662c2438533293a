"""Optional: named lm-evaluation-harness tasks (e.g. FIN-bench) on each model, when lm-eval is installed.

The harness reads each task's data through Hugging Face ``datasets``: from the hub (network access, a
warm cache) or from local files named in a task YAML (``--harness_include`` adds a folder of them). kielo
ships no such data. The harness scores the model itself (log-likelihoods of choices, or its own
generation settings), not kielo's prompt format; its numbers are reported as it computes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.util import find_spec

from kielo.errors import KieloError
from kielo.model.bundle import Bundle, use_variant

log = logging.getLogger(__name__)

DATA_NOTE = (
    "lm-evaluation-harness tasks read their data from the Hugging Face hub (network or a warm "
    "cache) or from local files named in a task YAML; kielo ships none"
)


@dataclass
class HarnessOptions:
    """Which harness tasks to run, on how many examples each, and where extra task YAMLs are."""

    tasks: list[str]
    limit: int | None = None  # examples per task (None: all)
    include_path: str | None = None  # a folder of task YAMLs (local data files)


def available() -> bool:
    """Whether lm-evaluation-harness (``lm_eval``) is installed."""
    return find_spec("lm_eval") is not None


def _require():
    if not available():
        raise KieloError(
            "--harness needs lm-evaluation-harness, which is not installed",
            f"pip install 'kielo[harness]' ({DATA_NOTE}), or drop --harness",
        )
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    return lm_eval, HFLM


def _scores(task_results: dict) -> dict[str, float]:
    """``{"acc,none": 0.5, "alias": ...}`` -> ``{"acc": 0.5}``: numeric metrics, filter suffix dropped."""
    out = {}
    for key, value in task_results.items():
        name = key.split(",", 1)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("_stderr"):
            out[name] = float(value)
    return out


def run_harness(bundle: Bundle, variants: list[str], options: HarnessOptions, batch_size: int = 8) -> dict:
    """Run the tasks on each variant of ``bundle``: ``{"tasks", "limit", "note", "results": {variant: {task: {metric: v}}}}``."""
    from kielo.evaluate.presets import resolve_harness_tasks

    lm_eval, HFLM = _require()
    tasks, form = resolve_harness_tasks(list(options.tasks), bundle)
    manager = None
    if options.include_path:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=options.include_path)
    results: dict[str, dict] = {}
    for name in variants:
        with use_variant(bundle, name):
            lm = HFLM(pretrained=bundle.model, tokenizer=bundle.tokenizer, batch_size=batch_size)
            try:
                out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=options.limit, task_manager=manager)
            except Exception as e:  # the harness fails in many ways (unknown task, no data offline): say which
                raise KieloError(
                    f"lm-evaluation-harness failed on {', '.join(tasks)} for {name}: {str(e)[:300]}",
                    f"check the task names (lm-eval ls tasks); {DATA_NOTE}",
                ) from e
        results[name] = {task: _scores(vals) for task, vals in (out or {}).get("results", {}).items()}
        log.info("harness %s: %s", name, results[name])
    found = {"tasks": tasks, "limit": options.limit, "note": DATA_NOTE, "results": results}
    if form:
        found["preset"] = {"name": options.tasks[0], "formulation": form}
    return found
