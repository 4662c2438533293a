"""A run's training curve: metrics.jsonl (always) and TensorBoard (when installed)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kielo.runs.saved import METRICS_FILE

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed).

    ``resume_step``: the step of the checkpoint a resumed run continues from; the records after it are cut
    (see :func:`truncate_metrics`) and new ones appended. None starts a new file."""

    def __init__(self, out: Path, resume_step: int | None = None):
        self.path = Path(out) / METRICS_FILE
        if resume_step is not None:
            dropped = truncate_metrics(self.path, resume_step)
            if dropped:
                log.info("%s: dropped %d records after step %d (trained again)", self.path, dropped, resume_step)
        self.fh = self.path.open("a" if resume_step is not None else "w", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
        except ImportError:
            log.debug("tensorboard not installed; metrics go to %s only", self.path)

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record.get('split', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


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
