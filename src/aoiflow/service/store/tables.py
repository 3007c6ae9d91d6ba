"""The store's tables as typed SQLAlchemy models (private to the store: records go out instead).

Strings are ``Text`` everywhere: PostgreSQL enforces ``VARCHAR(n)`` and SQLite ignores it, so a
length would make the same write succeed on one database and fail on the other.
Changing a model here needs a new migration in ``aoiflow/service/migrations/versions``;
``tests/test_store.py`` fails while the two disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL (indexable, compact); plain JSON text on SQLite.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
# SQLite keeps INTEGER PRIMARY KEY as its rowid; PostgreSQL gets 64 bits for a line that runs for years.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases.

    PostgreSQL has ``timestamptz``; SQLite has no time zones, so there the value is kept as naive
    UTC text, whose text order is time order (range filters compare it as text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"the store keeps timezone-aware datetimes only, got naive {value}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {str: sa.Text(), float: sa.Double(), datetime: UTCDateTime(),
                         list[Any]: JSONType, dict[str, Any]: JSONType}


class InspectionRow(Base):
    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str]
    file_name: Mapped[str]
    a: Mapped[float]
    r: Mapped[float]
    l: Mapped[float]
    threshold: Mapped[float]
    decision: Mapped[str]
    verdict: Mapped[str] = mapped_column(index=True)
    kind: Mapped[str | None] = mapped_column(index=True)
    confidence: Mapped[float | None]
    regions: Mapped[list[Any]]
    model_version: Mapped[str]
    supervised_version: Mapped[str | None]
    image_path: Mapped[str | None]
    map_path: Mapped[str | None]
    overlay_path: Mapped[str | None]
    timings_ms: Mapped[dict[str, Any]]
    descriptor: Mapped[list[Any] | None]
    review_status: Mapped[str | None]
    review_label: Mapped[str | None]
    reviewed_by: Mapped[str | None]
    reviewed_at: Mapped[datetime | None]
    reviewed_regions: Mapped[list[Any] | None]  # the regions a review left (revision 0002)


# Indexes for ``Store.descriptor_samples`` (the new-kind rule's refits, ``service/known_kinds.py``),
# both read newest first with a LIMIT (revision 0003):
# * labelled parts (a ``defect:<kind>`` verdict, or any review) are rare and an OR with LIKE, which
#   no column index serves: a partial index of exactly those rows in time order. A database uses a
#   partial index only when it sees that the query's WHERE implies the index's, so the query uses
#   LABELLED itself, its literals inline (a bound parameter's value is unknown when a plan is made);
# * passing parts (verdict "ok") are most rows: (verdict, created_at, id) finds them by equality
#   already in order, which SQLite picks even without ANALYZE statistics (a partial index loses
#   there to ix_inspections_verdict plus a sort).
LABELLED = sa.and_(InspectionRow.descriptor.is_not(None),
                   sa.or_(InspectionRow.verdict.like(sa.literal("defect:%", literal_execute=True)),
                          InspectionRow.review_status.is_not(None)))
sa.Index("ix_inspections_labelled", InspectionRow.created_at, InspectionRow.id,
         sqlite_where=LABELLED, postgresql_where=LABELLED)
sa.Index("ix_inspections_verdict_created_at_id", InspectionRow.verdict, InspectionRow.created_at, InspectionRow.id)


class ReviewActionRow(Base):
    """One action of an operator's review (revision 0002)."""

    __tablename__ = "review_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    action: Mapped[str]
    payload: Mapped[dict[str, Any]]
    by: Mapped[str | None]
    at: Mapped[datetime]


class AlertRow(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(unique=True)  # raised once: the database refuses a second row
    rule: Mapped[str]
    kind: Mapped[str | None]
    severity: Mapped[str]
    message: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(index=True)
    evidence: Mapped[list[Any]]
    details: Mapped[dict[str, Any]]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None]


class ProcessedFileRow(Base):
    __tablename__ = "processed_files"
    # One row per version of a file (a rewritten file has a new size or mtime and is new work).
    __table_args__ = (sa.UniqueConstraint("path", "size", "mtime_ns"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    path: Mapped[str]
    size: Mapped[int] = mapped_column(sa.BigInteger())
    mtime_ns: Mapped[int] = mapped_column(sa.BigInteger())
    claimed_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    inspection_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("inspections.id", ondelete="SET NULL"))
    error: Mapped[str | None]


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(unique=True)
    kind: Mapped[str]
    path: Mapped[str]
    created_at: Mapped[datetime]
    details: Mapped[dict[str, Any]]
