"""Divergence: notice a step that went wrong, and keep the last checkpoint written before it.

Three signs, each checked after backward and before the optimizer update:

- a non-finite loss or gradient norm;
- a loss far above its running value (a spike: more than ``SPIKE_RATIO`` times the running mean and more
  than ``SPIKE_NATS`` above it);
- a collapse to the uniform distribution: the loss within 1% of ln(vocabulary) with a gradient norm of
  about zero. A huge learning rate (1e6 and up) saturates the network in one update: every later step
  predicts all tokens alike, no gradient flows, and no NaN ever appears, so a finiteness check alone never
  fires while the weights sit at ~1e30.

The last two are signs for a token-mean cross-entropy (SFT). A preference objective's step loss is
-log sigmoid(beta * margin) over a few pairs: it sits near 0 once pairs are ranked and legitimately jumps to
about beta * |margin| on one misranked pair (DPO at beta 0.5 on the bundled pairs, 2 per step: 4.13 at a
running 0.175, a healthy run). Such objectives pass ``spikes=False`` and keep the finiteness check.

A checkpoint counts as good only once the step after it has passed these checks (the update that broke the
weights is the one before the first bad loss), and pruning never removes the newest good one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from kielo.errors import KieloError

SPIKE_RATIO = 3.0
SPIKE_NATS = 2.0
COLLAPSE_GRAD_NORM = 1e-6
EMA = 0.9
MAX_SKIPPED_IN_A_ROW = 3  # skipping more bad steps than this in a row does not recover a run: stop


@dataclass
class DivergenceGuard:
    """Judges each step and remembers which checkpoint is the last good one."""

    vocab_size: int
    mode: str = "stop"  # training.on_divergence: stop | skip
    spikes: bool = True  # the spike and collapse signs (the objective's ``loss_spikes``)
    running: float | None = None
    skipped_in_a_row: int = 0
    skipped: list[int] = field(default_factory=list)
    pending: Path | None = None  # written after the last checked step, not yet confirmed
    last_good: Path | None = None

    def problem(self, loss: float, grad_norm: float) -> str | None:
        """What is wrong with a step of this loss and gradient norm, or None."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"loss {loss}, gradient norm {grad_norm}: not finite"
        if not self.spikes:
            return None
        uniform = math.log(self.vocab_size)
        if abs(loss - uniform) < 0.01 * uniform and grad_norm < COLLAPSE_GRAD_NORM:
            return (
                f"loss {loss:.4f} = ln(vocabulary {self.vocab_size}) with gradient norm {grad_norm:.1e}: "
                "the model predicts every token alike and has stopped learning"
            )
        if self.running is not None and loss > SPIKE_RATIO * self.running and loss > self.running + SPIKE_NATS:
            return f"loss {loss:.4f} jumped from its running value {self.running:.4f}"
        return None

    def check(self, step: int, loss: float, grad_norm: float, learning_rate: float) -> bool:
        """True when step ``step`` (1-based) may update the weights; False to skip it; raises to stop."""
        what = self.problem(loss, grad_norm)
        if what is None:
            self.running = loss if self.running is None else EMA * self.running + (1 - EMA) * loss
            self.skipped_in_a_row = 0
            if self.pending is not None:
                self.last_good, self.pending = self.pending, None
            return True
        self.pending = None  # written after the update that broke the weights
        if self.mode == "skip" and self.skipped_in_a_row < MAX_SKIPPED_IN_A_ROW:
            self.skipped_in_a_row += 1
            self.skipped.append(step)
            return False
        good = f"; the last good checkpoint is {self.last_good}" if self.last_good is not None else ""
        again = f" ({self.skipped_in_a_row} steps skipped in a row before it)" if self.skipped_in_a_row else ""
        raise KieloError(
            f"training diverged at step {step}: {what}{again}{good}",
            f"lower --training.learning_rate (it was {learning_rate:g}; LoRA usually trains at 1e-4 to 1e-3), "
            "and start a new run in another --output_dir",
        )

    def written(self, checkpoint: Path) -> None:
        """A checkpoint was written after the last checked step: good once the next step checks out."""
        self.pending = checkpoint

    def protected(self) -> Path | None:
        """The checkpoint pruning must keep whatever keep_last says."""
        return self.last_good
