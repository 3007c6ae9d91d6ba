"""A wall-clock budget for one training call (``train.max_minutes``, ``aoiflow train --max-minutes``).

A line engineer asks for "the best model in 30 minutes", not for an epoch count that means
minutes on one machine and hours on another. The budget covers everything ``fit`` does: reading
the images, GANomaly's epochs, the head's steps and the calibration. GANomaly gets
``1 - head.budget_share`` of what is left after the calibration's estimated time when the run
has a head, all of it otherwise; the head gets the rest.

Each phase shrinks its *planned* length once it has timed itself (GANomaly after every epoch, the
head after its first steps), so its learning-rate schedule still runs to its end rather than being
cut off half-way. A budget only ever shortens: the configured epochs and steps stay the upper
limit. The run records what it trained (``config.yaml``), so ``--config RUN/config.yaml`` trains
the same thing again without a budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

SAFETY = 1.05  # plan as if each unit took 5 % longer than timed: later epochs jitter on a busy machine


@dataclass
class TimeBudget:
    """``seconds`` of wall time from ``start`` (0 = no budget), shared as the module docstring says."""

    seconds: float
    head_share: float = 0.0  # the head's share of the time after the calibration reserve (0 = no head)
    start: float = field(default_factory=time.perf_counter)
    reserve: float = 0.0  # seconds kept for the calibration at the end

    @classmethod
    def from_minutes(cls, minutes: float, head_share: float, start: float | None = None) -> "TimeBudget":
        return cls(minutes * 60.0, head_share, time.perf_counter() if start is None else start)

    @property
    def active(self) -> bool:
        return self.seconds > 0

    def _deadline(self, share: float) -> float:
        return self.start + (self.seconds - self.reserve) * share

    def ganomaly_left(self, now: float | None = None) -> float:
        """Seconds GANomaly's epochs may still take."""
        return self._deadline(1.0 - self.head_share) - (time.perf_counter() if now is None else now)

    @property
    def head_deadline(self) -> float:
        """The ``time.perf_counter()`` value the head's steps must end by (the calibration reserve after)."""
        return self._deadline(1.0)

    def head_left(self, now: float | None = None) -> float:
        """Seconds the head's steps may still take."""
        return self.head_deadline - (time.perf_counter() if now is None else now)


def units_that_fit(done: int, seconds_per_unit: float, seconds_left: float, planned: int) -> int:
    """How many units (epochs, steps) a phase should run in all: the ``done`` ones plus those that
    fit in ``seconds_left``, at least one more than done when nothing has run yet, never more
    than ``planned``.

    >>> units_that_fit(done=2, seconds_per_unit=10.0, seconds_left=35.0, planned=30)
    5
    """
    more = math.floor(seconds_left / (seconds_per_unit * SAFETY)) if seconds_per_unit > 0 else planned
    return max(min(planned, done + max(more, 0)), min(planned, max(done, 1)))


def calibration_reserve(val_seconds: float, n_val: int, n_calibration: int, window_ratio: float,
                        with_head: bool) -> float:
    """Estimated seconds of the calibration at the end of training, from one validation pass.

    The validation loss runs the generator once over ``n_val`` held-out normals (on a grid of
    windows with patches); calibration scores ``n_calibration`` images with the scoring windows
    (``window_ratio`` times as many) and, with a head, runs the head too (counted as doubling)."""
    if n_val <= 0:
        return 0.0
    per_image = val_seconds / n_val * window_ratio * (2.0 if with_head else 1.0)
    return per_image * n_calibration
