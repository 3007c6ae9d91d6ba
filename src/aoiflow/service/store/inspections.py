"""The inspection-specific parts of the store that need no session: filters as SQL conditions,
per-bucket statistics, and CSV cells."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from .records import InspectionFilter, InspectionRecord
from .tables import InspectionRow

BUCKETS = ("minute", "hour", "day")
# id and time first: the columns a person reading the export looks for.
CSV_FIELDS = ["id", "created_at"] + [f.name for f in fields(InspectionRecord) if f.name not in ("id", "created_at")]


def conditions(f: InspectionFilter | None) -> list[sa.ColumnElement[bool]]:
    """The filter as SQL conditions (all must hold); ``None`` selects everything."""
    if f is None:
        return []
    row = InspectionRow
    # Each test is built only when its value is given (`is not None`, not truthiness: min_a=0.0
    # and an empty verdict list are real filters).
    tests: list[tuple[Any, Callable[[Any], sa.ColumnElement[bool]]]] = [
        (f.since, lambda v: row.created_at >= v),
        (f.until, lambda v: row.created_at < v),
        (f.decision, lambda v: row.decision == v),
        (f.min_a, lambda v: row.a >= v),
        (f.max_a, lambda v: row.a <= v),
        (f.model_version, lambda v: row.model_version == v),
        (f.source, lambda v: row.source == v),
        (f.review_status, lambda v: row.review_status == v),
        (f.verdicts, lambda v: row.verdict.in_(v)),
        (f.kinds, lambda v: row.kind.in_(v)),
    ]
    chosen = [build(value) for value, build in tests if value is not None]
    if f.unreviewed_only:
        chosen.append(row.review_status.is_(None))
    return chosen


def bucket_start(moment: datetime, bucket: str) -> datetime:
    """The start of the UTC minute, hour or day that holds ``moment``."""
    if bucket == "minute":
        return moment.replace(second=0, microsecond=0)
    if bucket == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def check_bucket(bucket: str) -> None:
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")


def tally(rows: Iterable[tuple[datetime, str]], bucket: str) -> list[dict[str, Any]]:
    """Per bucket (oldest first, empty buckets left out): total, ok, anomaly (every verdict that
    is not ok), defects per kind (from ``defect:<kind>`` verdicts) and yield = ok / total."""
    counts: dict[datetime, dict[str, Any]] = {}
    for created_at, verdict in rows:
        start = bucket_start(created_at, bucket)
        entry = counts.setdefault(start, {"bucket": start, "total": 0, "ok": 0, "anomaly": 0, "defects": {}})
        entry["total"] += 1
        if verdict == "ok":
            entry["ok"] += 1
            continue
        entry["anomaly"] += 1
        if verdict.startswith("defect:"):
            kind = verdict.removeprefix("defect:")
            entry["defects"][kind] = entry["defects"].get(kind, 0) + 1
    result = [counts[start] for start in sorted(counts)]
    for entry in result:
        entry["yield"] = entry["ok"] / entry["total"]
    return result


def csv_cells(record: InspectionRecord) -> list[Any]:
    """One CSV row in ``CSV_FIELDS`` order: times in ISO 8601 with offset, JSON as JSON text,
    None as an empty cell."""
    cells = []
    for name in CSV_FIELDS:
        value = getattr(record, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        cells.append("" if value is None else value)
    return cells
