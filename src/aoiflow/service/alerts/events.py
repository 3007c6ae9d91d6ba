"""What the alert rules read and what they raise: ``Observation`` in, ``Alert`` out.

Both are plain records with no tie to torch, the web app or the database, so the rules run the
same from the library, a notebook or the line service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

DECISIONS = ("normal", "anomalous")  # the calibrated decision (aoiflow.calibrate.verdict)
SEVERITIES = ("info", "warning", "critical")
_PLAIN_VERDICTS = ("ok", "anomaly", "unknown_anomaly")


def _check_aware(time: datetime, what: str) -> None:
    if not isinstance(time, datetime) or time.tzinfo is None or time.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {time!r}")


@dataclass(kw_only=True)
class Observation:
    """One inspected frame as the alert rules see it.

    ``a`` is the anomaly score (higher = more anomalous); ``decision`` the calibrated decision ("normal" or "anomalous");
    ``verdict`` one of "ok", "anomaly", "defect:<kind>", "unknown_anomaly"; ``descriptor`` a 1-D
    feature vector of a flagged part (e.g. latent code + region features); ``input_ok`` is False
    when the frame could not be read or preprocessed (then ``a`` may be NaN).
    """

    inspection_id: int | None
    time: datetime
    a: float
    decision: str
    verdict: str
    kind: str | None = None
    descriptor: np.ndarray | None = None
    input_ok: bool = True
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_aware(self.time, "Observation.time")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.verdict not in _PLAIN_VERDICTS and not (
            self.verdict.startswith("defect:") and len(self.verdict) > len("defect:")
        ):
            raise ValueError(f"verdict must be ok, anomaly, unknown_anomaly or defect:<kind>, got {self.verdict!r}")
        self.a = float(self.a)
        if self.descriptor is not None:
            self.descriptor = np.asarray(self.descriptor, dtype=np.float64).reshape(-1)

    @property
    def flagged(self) -> bool:
        """True when the calibrated decision called the part anomalous."""
        return self.decision == "anomalous"

    @property
    def kind_label(self) -> str | None:
        """The kind to count this part under: ``kind`` if given, else read from the verdict.

        "defect:scratch" -> "scratch", "unknown_anomaly" -> "unknown_anomaly"; None for passing
        parts and for a bare "anomaly" verdict (no defect-kind model).
        """
        if self.kind:
            return self.kind
        if self.verdict.startswith("defect:"):
            return self.verdict[len("defect:"):]
        return "unknown_anomaly" if self.verdict == "unknown_anomaly" else None

    @property
    def passing(self) -> bool:
        """A readable part the decision let through, with a finite score."""
        return self.input_ok and self.decision == "normal" and math.isfinite(self.a)

    def ref(self) -> str:
        """A stable reference for keys: the inspection id, or the time when there is none."""
        return str(self.inspection_id) if self.inspection_id is not None else self.time.isoformat()


@dataclass(kw_only=True)
class Alert:
    """One alert for an operator.

    ``key`` is stable: the same situation gives the same key, so it is raised once (the engine
    dedupes on it). ``evidence`` lists inspection ids; ``details`` is JSON-safe.
    """

    key: str
    rule: str
    kind: str | None
    severity: str
    message: str
    time: datetime
    evidence: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_aware(self.time, "Alert.time")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (time as ISO 8601)."""
        return {
            "key": self.key, "rule": self.rule, "kind": self.kind, "severity": self.severity,
            "message": self.message, "time": self.time.isoformat(),
            "evidence": [int(i) for i in self.evidence], "details": json_safe(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Inverse of ``to_dict``."""
        return cls(key=d["key"], rule=d["rule"], kind=d.get("kind"), severity=d["severity"],
                   message=d["message"], time=datetime.fromisoformat(d["time"]),
                   evidence=list(d.get("evidence", [])), details=dict(d.get("details", {})))


def json_safe(value: Any) -> Any:
    """Turn numpy scalars/arrays, datetimes and tuples into plain JSON types; NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
