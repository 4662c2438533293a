"""A run's training curve: metrics.jsonl (always) and the trackers of ``training.report_to``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kielo.runs.saved import METRICS_FILE

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl (always) and ``trackers`` (kielo.runs.trackers: TensorBoard, W&B, MLflow, Trackio).

    ``resume_step``: the step of the checkpoint a resumed run continues from; the records after it are cut
    (see :func:`truncate_metrics`) and new ones appended. None starts a new file."""

    def __init__(self, out: Path, resume_step: int | None = None, trackers: list | None = None):
        self.path = Path(out) / METRICS_FILE
        if resume_step is not None:
            dropped = truncate_metrics(self.path, resume_step)
            if dropped:
                log.info("%s: dropped %d records after step %d (trained again)", self.path, dropped, resume_step)
        self.fh = self.path.open("a" if resume_step is not None else "w", encoding="utf-8")
        self.trackers = list(trackers or [])

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        for tracker in self.trackers:
            tracker.log(record)

    def close(self, final: dict | None = None) -> None:
        """Close the file; each tracker gets ``final`` (the run's end numbers) and is finished."""
        self.fh.close()
        for tracker in self.trackers:
            tracker.finish(final or {})


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (the checkpoint resumed from): the steps after it
    are trained again and write their records again. A torn last line (killed mid-write) goes too.
    Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped
