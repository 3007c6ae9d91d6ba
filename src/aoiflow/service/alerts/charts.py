"""Control-chart arithmetic: p-chart and EWMA limits, and a two-sided Page–Hinkley detector.

Hand-written on purpose: each is a few lines of arithmetic on a running state that must be saved
and restored between service restarts; the libraries that offer them (river, ruptures,
statsmodels) either keep state in objects that cannot be serialised plainly or work on whole
series offline, and none is a dependency of aoiflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def p_chart_ucl(p0: float, n: int, z: float = 3.0) -> float:
    """Upper control limit of a p-chart: ``p0 + z * sqrt(p0 (1 - p0) / n)``."""
    _check_rate(p0)
    return p0 + z * math.sqrt(p0 * (1.0 - p0) / n)


def ewma_ucl(p0: float, n: int, lam: float, width: float, t: int) -> float:
    """Upper limit of an EWMA chart of window proportions after ``t`` windows.

    ``p0 + width * sigma * sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 t)))`` with
    ``sigma = sqrt(p0 (1 - p0) / n)`` (the exact, time-varying limit, tight at the start).
    """
    _check_rate(p0)
    sigma = math.sqrt(p0 * (1.0 - p0) / n)
    return p0 + width * sigma * math.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * t)))


def _check_rate(p0: float) -> None:
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"a baseline rate must lie strictly between 0 and 1, got {p0}")


@dataclass
class PageHinkley:
    """Two-sided Page–Hinkley test on standardised values ``x = (a - mean0) / sd0``.

    With the reference mean fixed (known or learned before watching) this is Page's CUSUM run in
    both directions: ``up = max(0, up + x - delta)``, ``down = max(0, down - x - delta)``; a side
    fires when its statistic exceeds ``lam``. Chosen over Page–Hinkley with a running mean because
    the running mean absorbs a slow drift and hides it, while a fixed reference keeps the alarm
    rate known (Siegmund's approximation gives the average run lengths). For each side it keeps
    the start of the current run (the last time the statistic sat at zero): the estimated change
    point, and the mean of ``x`` since then: the estimated shift.
    """

    delta: float = 0.5
    lam: float = 10.0
    up: float = 0.0
    down: float = 0.0
    up_n: int = 0
    down_n: int = 0
    up_sum: float = 0.0
    down_sum: float = 0.0
    up_start: Any = None
    down_start: Any = None

    def update(self, x: float, ref: Any = None) -> str | None:
        """Add one standardised value (``ref`` tags it); return "up"/"down" when a side fires."""
        self.up, self.up_n, self.up_sum, self.up_start = self._side(
            self.up + x - self.delta, self.up_n, self.up_sum, self.up_start, x, ref)
        self.down, self.down_n, self.down_sum, self.down_start = self._side(
            self.down - x - self.delta, self.down_n, self.down_sum, self.down_start, x, ref)
        if self.up > self.lam:
            return "up"
        if self.down > self.lam:
            return "down"
        return None

    @staticmethod
    def _side(stat: float, n: int, total: float, start: Any, x: float, ref: Any) -> tuple[float, int, float, Any]:
        if stat <= 0.0:
            return 0.0, 0, 0.0, None
        if n == 0:
            start = ref
        return stat, n + 1, total + x, start

    def run(self, direction: str) -> tuple[int, float, Any]:
        """(length, mean of x, start ref) of the current run on one side."""
        n, total, start = (self.up_n, self.up_sum, self.up_start) if direction == "up" else (
            self.down_n, self.down_sum, self.down_start)
        return n, (total / n if n else 0.0), start

    def reset(self) -> None:
        """Back to zero on both sides (after an alarm, or on re-arming)."""
        self.up = self.down = self.up_sum = self.down_sum = 0.0
        self.up_n = self.down_n = 0
        self.up_start = self.down_start = None

    def state_dict(self) -> dict[str, Any]:
        """The running statistics (not delta and lam: those are settings)."""
        state = asdict(self)
        del state["delta"], state["lam"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key not in ("delta", "lam"):
                setattr(self, key, value)
