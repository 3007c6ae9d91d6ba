"""Alert rules on the stream of inspections: defect rates, drift of normal scores, input health.

Every rule has ``observe(obs) -> list[Alert]`` and a JSON-safe ``state_dict()`` /
``load_state_dict()`` so the service can save it and carry on after a restart. Each raises once
per episode (a stretch out of control) and re-arms when back in control. The grouping of unknown
anomalies into new kinds is in ``novelty.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .charts import PageHinkley, ewma_ucl, p_chart_ucl
from .events import Alert, Observation

ALL_KINDS = "any"


class Rule(ABC):
    """One alert rule: reads observations one at a time, returns the alerts they trigger."""

    name: str

    @abstractmethod
    def observe(self, obs: Observation) -> list[Alert]:
        """Update with one observation; return new alerts (usually none)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe running state (not the settings)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` gave."""


def obs_ref(obs: Observation) -> dict[str, Any]:
    """JSON-safe pointer to an observation: inspection id and time."""
    return {"id": obs.inspection_id, "time": obs.time.isoformat()}


def describe_ref(ref: dict[str, Any]) -> str:
    """'inspection 12 (2024-05-01 12:00:03+00:00)' for a message."""
    when = datetime.fromisoformat(ref["time"]).isoformat(sep=" ", timespec="seconds")
    return f"inspection {ref['id']} ({when})" if ref.get("id") is not None else when


def key_ref(ref: dict[str, Any]) -> str:
    """The stable part of a key: the inspection id, or the time when there is none."""
    return str(ref["id"]) if ref.get("id") is not None else ref["time"]


# ----------------------------------------------------------------------------- defect rates

@dataclass
class _KindChart:
    """Running chart state of one kind."""

    p0: float
    in_episode: bool = False
    ewma: float | None = None
    ewma_t: int = 0
    ewma_episode: bool = False


class DefectRateChart(Rule):
    """p-chart (and/or EWMA chart) of the anomaly rate per kind and of all anomalies together.

    Inspections are cut into consecutive windows of ``n`` readable parts; kinds are "any" (every
    flagged part) and each part's ``kind_label``. p-chart: a window is out of control when its
    count exceeds ``n * UCL`` with ``UCL = p0 + z sqrt(p0 (1 - p0) / n)``. The count only grows,
    so the alert comes as soon as the count passes that bound, before the window closes, with no
    extra false alarms. EWMA (``chart="ewma"`` or ``"both"``): ``e = lam p + (1 - lam) e`` over
    closed windows against the exact time-varying limit. Each chart alerts once per episode and
    re-arms after a closed window back in control.

    ``baseline``: a rate for every kind, a mapping kind -> rate (only those kinds are charted,
    "any" for all anomalies together), or None to learn it from the first ``baseline_n`` readable
    inspections. Learned rates are floored at ``0.5 / baseline_n`` (half a part) so a kind absent
    from the baseline does not alert on its first occurrence. Unreadable frames are not counted
    (``InputHealth`` watches them).
    """

    def __init__(self, n: int = 200, z: float = 3.0, baseline: float | Mapping[str, float] | None = None,
                 baseline_n: int = 1000, chart: str = "p", ewma_lambda: float = 0.2, ewma_width: float = 3.0,
                 kinds: Sequence[str] | None = None, name: str = "defect_rate") -> None:
        if chart not in ("p", "ewma", "both"):
            raise ValueError(f"chart must be 'p', 'ewma' or 'both', got {chart!r}")
        if n < 1 or baseline_n < 1:
            raise ValueError("n and baseline_n must be positive")
        self.n, self.z, self.chart, self.name = n, z, chart, name
        self.baseline, self.baseline_n = baseline, baseline_n
        self.ewma_lambda, self.ewma_width = ewma_lambda, ewma_width
        self.kinds = None if kinds is None else set(kinds) | {ALL_KINDS}
        self._charts: dict[str, _KindChart] | None = None
        self._learn_n = 0
        self._learn_counts: dict[str, int] = {}
        if baseline is not None:
            rates = baseline if isinstance(baseline, Mapping) else {ALL_KINDS: baseline}
            self._charts = {k: _KindChart(float(p)) for k, p in rates.items() if self._wanted(k)}
            for chart_ in self._charts.values():
                p_chart_ucl(chart_.p0, n)  # checks the rate
        self._reset_window()

    def _wanted(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def _reset_window(self) -> None:
        self._win_n = 0
        self._win_start: dict[str, Any] | None = None
        self._counts: dict[str, int] = {}
        self._ids: dict[str, list[int]] = {}

    def ucl(self, kind: str) -> float:
        """The p-chart upper control limit of a charted kind."""
        return p_chart_ucl(self._charts[kind].p0, self.n, self.z)

    def observe(self, obs: Observation) -> list[Alert]:
        if not obs.input_ok:
            return []
        labels = self._labels(obs)
        if self._charts is None:
            self._learn(labels)
            return []
        if self._win_n == 0:
            self._win_start = obs_ref(obs)
        self._win_n += 1
        alerts = [a for k in labels if (a := self._count(k, obs)) is not None]
        if self._win_n >= self.n:
            alerts += self._close_window(obs)
        return alerts

    def _labels(self, obs: Observation) -> list[str]:
        if not obs.flagged:
            return []
        labels = [ALL_KINDS] + ([obs.kind_label] if obs.kind_label else [])
        return [k for k in labels if self._wanted(k)]

    def _learn(self, labels: list[str]) -> None:
        self._learn_n += 1
        for k in labels:
            self._learn_counts[k] = self._learn_counts.get(k, 0) + 1
        if self._learn_n >= self.baseline_n:
            self._charts = {ALL_KINDS: _KindChart(self._learned_rate(0))}
            for k, c in self._learn_counts.items():
                self._charts[k] = _KindChart(self._learned_rate(c))

    def _learned_rate(self, count: int) -> float:
        m = self.baseline_n
        return min(max(count, 0.5), m - 0.5) / m

    def _chart_for(self, kind: str) -> _KindChart | None:
        if kind not in self._charts and not isinstance(self.baseline, Mapping):
            p0 = float(self.baseline) if self.baseline is not None else self._learned_rate(0)
            self._charts[kind] = _KindChart(p0)
        return self._charts.get(kind)

    def _count(self, kind: str, obs: Observation) -> Alert | None:
        chart = self._chart_for(kind)
        if chart is None:
            return None
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if obs.inspection_id is not None:
            self._ids.setdefault(kind, []).append(obs.inspection_id)
        if self.chart == "ewma" or chart.in_episode or self._counts[kind] <= self.n * self.ucl(kind):
            return None
        chart.in_episode = True
        return self._p_alert(kind, chart, obs)

    def _what(self, kind: str) -> str:
        return "all anomalies" if kind == ALL_KINDS else f"kind '{kind}'"

    def _p_alert(self, kind: str, chart: _KindChart, obs: Observation) -> Alert:
        count, ucl = self._counts[kind], self.ucl(kind)
        message = (f"Anomaly rate too high for {self._what(kind)}: {count} in the {self._win_n} parts since "
                   f"{describe_ref(self._win_start)}. Baseline {chart.p0:.2%}; a {self.n}-part window in control "
                   f"holds at most {math.floor(self.n * ucl)} ({ucl:.2%}).")
        details = {"chart": "p", "count": count, "parts": self._win_n, "n": self.n, "p0": chart.p0,
                   "ucl": ucl, "z": self.z, "window_start": self._win_start}
        return Alert(key=f"rate:{kind}:{key_ref(self._win_start)}", rule=self.name, kind=kind,
                     severity="warning", message=message, time=obs.time,
                     evidence=list(self._ids.get(kind, [])), details=details)

    def _close_window(self, obs: Observation) -> list[Alert]:
        alerts = []
        for kind, chart in self._charts.items():
            count = self._counts.get(kind, 0)
            if count <= self.n * self.ucl(kind):
                chart.in_episode = False
            if self.chart != "p" and (alert := self._ewma_step(kind, chart, count / self.n, obs)):
                alerts.append(alert)
        self._reset_window()
        return alerts

    def _ewma_step(self, kind: str, chart: _KindChart, rate: float, obs: Observation) -> Alert | None:
        lam = self.ewma_lambda
        chart.ewma = lam * rate + (1 - lam) * (chart.p0 if chart.ewma is None else chart.ewma)
        chart.ewma_t += 1
        limit = ewma_ucl(chart.p0, self.n, lam, self.ewma_width, chart.ewma_t)
        if chart.ewma <= limit:
            chart.ewma_episode = False
            return None
        if chart.ewma_episode:
            return None
        chart.ewma_episode = True
        message = (f"Anomaly rate rising for {self._what(kind)}: the smoothed rate (EWMA) is {chart.ewma:.2%} "
                   f"after the {self.n}-part window since {describe_ref(self._win_start)} "
                   f"({rate:.2%} in that window), over its limit {limit:.2%}; baseline {chart.p0:.2%}.")
        details = {"chart": "ewma", "ewma": chart.ewma, "limit": limit, "window_rate": rate, "n": self.n,
                   "p0": chart.p0, "lambda": lam, "width": self.ewma_width, "window_start": self._win_start}
        return Alert(key=f"rate-ewma:{kind}:{key_ref(self._win_start)}", rule=self.name, kind=kind,
                     severity="warning", message=message, time=obs.time,
                     evidence=list(self._ids.get(kind, [])), details=details)

    def state_dict(self) -> dict[str, Any]:
        return {
            "charts": None if self._charts is None else {k: asdict(c) for k, c in self._charts.items()},
            "learn_n": self._learn_n, "learn_counts": dict(self._learn_counts),
            "win_n": self._win_n, "win_start": self._win_start,
            "counts": dict(self._counts), "ids": {k: list(v) for k, v in self._ids.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        charts = state["charts"]
        self._charts = None if charts is None else {k: _KindChart(**c) for k, c in charts.items()}
        self._learn_n, self._learn_counts = state["learn_n"], dict(state["learn_counts"])
        self._win_n, self._win_start = state["win_n"], state["win_start"]
        self._counts = dict(state["counts"])
        self._ids = {k: list(v) for k, v in state["ids"].items()}


# ----------------------------------------------------------------------------- drift of normals

class NormalDrift(Rule):
    """Drift of the anomaly score A of passing parts: a two-sided Page–Hinkley test.

    The reference mean and sd are ``reference`` or learned from the first ``reference_n`` passing
    parts (sample sd). Values are standardised by them, so ``delta`` (the allowance, half the
    smallest shift worth catching) and ``lam`` (the alarm threshold) are in units of that sd.
    Defaults delta 0.5, lam 10: on Gaussian scores the average run between false alarms is about
    70 000 passing parts (Siegmund's approximation, both sides) and a 1-sd shift is caught after
    about 20 parts on average. One alert per episode, giving the direction, the estimated size of
    the shift (mean since the estimated change point) and since which inspection; the episode ends
    (re-arm) once the mean of ``rearm_window`` passing parts after the alarm is back within delta
    of the reference on the alarm's side.
    """

    def __init__(self, delta: float = 0.5, lam: float = 10.0, reference: tuple[float, float] | None = None,
                 reference_n: int = 500, rearm_window: int = 100, name: str = "normal_drift") -> None:
        if delta < 0 or lam <= 0 or reference_n < 2 or rearm_window < 1:
            raise ValueError("need delta >= 0, lam > 0, reference_n >= 2 and rearm_window >= 1")
        self.delta, self.lam, self.reference_n, self.rearm_window, self.name = (
            delta, lam, reference_n, rearm_window, name)
        self._mean: float | None = None
        self._sd: float | None = None
        if reference is not None:
            self._set_reference(*reference)
        self._learn: list[float] = []
        self._detector = PageHinkley(delta, lam)
        self._episode: dict[str, Any] | None = None
        self._rearm: deque[float] = deque(maxlen=rearm_window)

    def _set_reference(self, mean: float, sd: float) -> None:
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise ValueError(f"the reference needs a finite mean and a positive sd, got {mean}, {sd}")
        self._mean, self._sd = float(mean), float(sd)

    @property
    def reference(self) -> tuple[float, float] | None:
        """(mean, sd) of A of passing parts, once known."""
        return None if self._mean is None else (self._mean, self._sd)

    def observe(self, obs: Observation) -> list[Alert]:
        if not obs.passing:
            return []
        if self._mean is None:
            self._learn.append(obs.a)
            if len(self._learn) >= self.reference_n:
                values = np.asarray(self._learn)
                self._set_reference(float(values.mean()), max(float(values.std(ddof=1)), 1e-12))
                self._learn = []
            return []
        x = (obs.a - self._mean) / self._sd
        if self._episode is not None:
            self._watch_rearm(x)
            return []
        direction = self._detector.update(x, obs_ref(obs))
        return [] if direction is None else [self._alarm(direction, obs)]

    def _watch_rearm(self, x: float) -> None:
        self._rearm.append(x)
        if len(self._rearm) < self.rearm_window:
            return
        mean = float(np.mean(self._rearm))
        back = mean < self.delta if self._episode["direction"] == "up" else mean > -self.delta
        if back:
            self._episode = None
            self._detector.reset()

    def _alarm(self, direction: str, obs: Observation) -> Alert:
        length, shift, start = self._detector.run(direction)
        self._detector.reset()
        self._rearm.clear()
        key = f"drift:{direction}:{key_ref(start)}"
        self._episode = {"direction": direction, "key": key}
        message = (f"Scores of passing parts drifted {direction} by about {abs(shift):.1f} sd "
                   f"({shift * self._sd:+.4g} in A; reference mean {self._mean:.4g}, sd {self._sd:.3g}) "
                   f"since {describe_ref(start)}, over the last {length} passing parts.")
        details = {"direction": direction, "shift_sd": shift, "shift_a": shift * self._sd, "since": start,
                   "parts": length, "reference_mean": self._mean, "reference_sd": self._sd,
                   "delta": self.delta, "lambda": self.lam}
        evidence = [i for i in (start.get("id"), obs.inspection_id) if i is not None]
        return Alert(key=key, rule=self.name, kind=None, severity="warning", message=message,
                     time=obs.time, evidence=evidence, details=details)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self._mean, "sd": self._sd, "learn": list(self._learn),
                "detector": self._detector.state_dict(), "episode": self._episode, "rearm": list(self._rearm)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._mean, self._sd, self._learn = state["mean"], state["sd"], list(state["learn"])
        self._detector.load_state_dict(state["detector"])
        self._episode = state["episode"]
        self._rearm = deque(state["rearm"], maxlen=self.rearm_window)


# ----------------------------------------------------------------------------- input health

class InputHealth(Rule):
    """Share of unreadable / unpreprocessable frames among the last ``window`` over ``limit``.

    Alerts when more than ``limit * window`` of the last ``window`` frames failed (so a dead camera
    is reported before the window fills), once per episode; re-arms when the count is back at or
    under that bound. Severity is critical from ``critical_share`` of the window on.
    """

    def __init__(self, window: int = 100, limit: float = 0.05, critical_share: float = 0.5,
                 name: str = "input_health") -> None:
        if window < 1 or not 0 <= limit < 1:
            raise ValueError("need window >= 1 and 0 <= limit < 1")
        self.window, self.limit, self.critical_share, self.name = window, limit, critical_share, name
        self._frames: deque[dict[str, Any]] = deque(maxlen=window)
        self._in_episode = False

    def observe(self, obs: Observation) -> list[Alert]:
        self._frames.append({"ok": bool(obs.input_ok), **obs_ref(obs)})
        bad = [f for f in self._frames if not f["ok"]]
        if len(bad) <= self.limit * self.window:
            self._in_episode = False
            return []
        if self._in_episode:
            return []
        self._in_episode = True
        return [self._alert(bad, obs)]

    def _alert(self, bad: list[dict[str, Any]], obs: Observation) -> Alert:
        share = len(bad) / len(self._frames)
        message = (f"{len(bad)} of the last {len(self._frames)} frames ({share:.1%}) could not be read or "
                   f"preprocessed, over the {self.limit:.1%} limit; the first of them at {describe_ref(bad[0])}. "
                   f"Check the camera, lighting and image transfer.")
        severity = "critical" if len(bad) >= self.critical_share * self.window else "warning"
        details = {"bad": len(bad), "frames": len(self._frames), "window": self.window, "limit": self.limit,
                   "first_bad": bad[0]}
        return Alert(key=f"input:{key_ref(bad[0])}", rule=self.name, kind=None, severity=severity,
                     message=message, time=obs.time, evidence=[f["id"] for f in bad if f["id"] is not None],
                     details=details)

    def state_dict(self) -> dict[str, Any]:
        return {"frames": list(self._frames), "in_episode": self._in_episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._frames = deque(state["frames"], maxlen=self.window)
        self._in_episode = state["in_episode"]
