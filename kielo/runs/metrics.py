"""A run's training curve: metrics.jsonl (always) and TensorBoard (when installed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kielo.runs.saved import METRICS_FILE

log = logging.getLogger(__name__)


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed)."""

    def __init__(self, out: Path, resume: bool):
        self.path = Path(out) / METRICS_FILE
        self.fh = self.path.open("a" if resume else "w", encoding="utf-8")
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
