"""Plain records that go in and out of the store: no ORM object ever leaves it.

Each record checks its values when made, so a bad value fails at the caller's line with a message
that says what was expected, not later inside a database driver (and the same way on SQLite and
PostgreSQL, which otherwise disagree: SQLite would store NaN as NULL, PostgreSQL keeps it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DECISIONS = ("normal", "anomalous")  # the calibrated decision (aoiflow.calibrate.verdict)
REVIEW_STATUSES = ("confirmed", "corrected", "rejected")
_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MODEL_KINDS = ("ganomaly", "supervised")
_VERDICT = re.compile(r"^(ok|anomaly|unknown_anomaly|defect:.+)$")


def utcnow() -> datetime:
    """Now, as a timezone-aware UTC datetime (the only kind of time the store keeps)."""
    return datetime.now(UTC)


def check_aware(name: str, value: datetime | None) -> None:
    """Refuse naive datetimes: whether one meant UTC or the PC's local time cannot be known."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)), got naive {value}")


def _check_choice(name: str, value: str | None, choices: tuple[str, ...], optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}{' or None' if optional else ''}, got {value!r}")


def _check_number(name: str, value: float | None) -> None:
    if value is not None and math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")


@dataclass(kw_only=True)
class InspectionRecord:
    """One inspected frame: its scores, decision, verdict, where its files are, and its review.

    ``verdict`` is ``"ok"``, ``"anomaly"``, ``"unknown_anomaly"`` or ``"defect:<kind>"``;
    ``id`` is assigned by the store (left ``None`` when adding).
    """

    source: str
    file_name: str
    a: float
    r: float
    l: float
    threshold: float
    decision: str
    verdict: str
    model_version: str
    kind: str | None = None
    confidence: float | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    supervised_version: str | None = None
    image_path: str | None = None
    map_path: str | None = None
    overlay_path: str | None = None
    timings_ms: dict[str, Any] = field(default_factory=dict)
    descriptor: list[float] | None = None
    review_status: str | None = None
    review_label: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    # The regions a review left ({"kind", "polygon": [[x, y], ...], "box", "area"}; [] for a part
    # reviewed normal), None when the review gave none (or there was no review).
    reviewed_regions: list[dict[str, Any]] | None = None
    id: int | None = None
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        _check_choice("decision", self.decision, DECISIONS)
        _check_choice("review_status", self.review_status, REVIEW_STATUSES, optional=True)
        if not _VERDICT.match(self.verdict):
            raise ValueError("verdict must be 'ok', 'anomaly', 'unknown_anomaly' or 'defect:<kind>', "
                             f"got {self.verdict!r}")
        for name in ("a", "r", "l", "threshold", "confidence"):
            _check_number(name, getattr(self, name))
        check_aware("created_at", self.created_at)
        check_aware("reviewed_at", self.reviewed_at)


@dataclass(kw_only=True)
class InspectionFilter:
    """Which inspections to select; every field left at its default selects all.

    ``since`` is inclusive and ``until`` exclusive, so consecutive windows never count a row twice.
    A list (``verdicts``, ``kinds``) selects rows whose value is in it: an empty list selects none.
    """

    since: datetime | None = None
    until: datetime | None = None
    verdicts: list[str] | None = None
    kinds: list[str] | None = None
    decision: str | None = None
    min_a: float | None = None
    max_a: float | None = None
    model_version: str | None = None
    source: str | None = None
    review_status: str | None = None
    unreviewed_only: bool = False

    def __post_init__(self) -> None:
        check_aware("since", self.since)
        check_aware("until", self.until)
        _check_choice("decision", self.decision, DECISIONS, optional=True)
        _check_choice("review_status", self.review_status, REVIEW_STATUSES, optional=True)


@dataclass
class DescriptorSample:
    """An inspection's descriptor with what labels it: the decision, the verdict and its review."""

    descriptor: list[float] | None
    decision: str
    verdict: str
    review_status: str | None
    review_label: str | None


@dataclass(kw_only=True)
class ReviewActionRecord:
    """One action of a review: ``action`` a short snake_case name (accept, mark_normal,
    delete_region, move_vertex, add_box, rename_region, ...), ``payload`` what it changed."""

    inspection_id: int
    action: str
    payload: dict[str, Any] = field(default_factory=dict)
    by: str | None = None
    id: int | None = None
    at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not _ACTION.match(self.action or ""):
            raise ValueError(f"action must be a snake_case name of at most 40 characters, got {self.action!r}")
        if not isinstance(self.payload, dict):
            raise TypeError(f"payload must be a dict, got {type(self.payload).__name__}")
        check_aware("at", self.at)


@dataclass(kw_only=True)
class AlertRecord:
    """An alert raised by a rule; ``key`` names it, and one key is raised once only.

    ``evidence`` lists the inspection ids that made the rule fire.
    """

    key: str
    rule: str
    severity: str
    message: str
    kind: str | None = None
    evidence: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    id: int | None = None
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("an alert needs a non-empty key (the same key is raised once)")
        check_aware("created_at", self.created_at)
        check_aware("acknowledged_at", self.acknowledged_at)


@dataclass(kw_only=True)
class ProcessedFile:
    """A file the folder watcher claimed: finished (with an inspection or an error) or not yet."""

    path: str
    size: int
    mtime_ns: int
    claimed_at: datetime
    finished_at: datetime | None = None
    inspection_id: int | None = None
    error: str | None = None


@dataclass(kw_only=True)
class ModelVersionRecord:
    """A model the line has used: ``version`` is unique, ``kind`` is "ganomaly" or "supervised"."""

    version: str
    kind: str
    path: str
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, MODEL_KINDS)
        check_aware("created_at", self.created_at)
