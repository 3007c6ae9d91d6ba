"""``Store``: every inspection, alert, processed file and model version of the line.

Each public method is one transaction: it commits whole or not at all. Records go in and come
out; SQLAlchemy objects never leave this module.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import inspections
from .engine import describe, for_writing, make_engine, unavailable_as, upgrade_to_head
from .records import (
    REVIEW_STATUSES,
    AlertRecord,
    DescriptorSample,
    InspectionFilter,
    InspectionRecord,
    ModelVersionRecord,
    ProcessedFile,
    ReviewActionRecord,
    utcnow,
)
from .tables import LABELLED, AlertRow, Base, InspectionRow, ModelVersionRow, ProcessedFileRow, ReviewActionRow

R = TypeVar("R")
_STREAM_BATCH = 500  # rows fetched at a time when exporting or counting statistics


def _record(row: Base, cls: type[R]) -> R:
    """The record of the same name fields as ``row``."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _values(record: Any) -> dict[str, Any]:
    """A record's column values for inserting; ``id`` is always the database's to assign."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "id"}


class Store:
    """The line's database: a SQLite file (``Store.sqlite(path)``) or PostgreSQL (``Store(url)``).

    Opening migrates the schema to the newest revision. Every call raises ``StoreUnavailable``
    when the database cannot be reached, and works again once it can. Safe to share between threads.
    """

    def __init__(self, url: str | sa.URL) -> None:
        self.url = sa.make_url(url)
        self.name = describe(self.url)  # for messages: password hidden
        with unavailable_as(self.name):
            migrating = make_engine(self.url, create=True)
            try:
                upgrade_to_head(migrating)
            finally:
                migrating.dispose()
        self._engine = make_engine(self.url)
        self._writer = for_writing(self._engine)
        self._closed = False

    @classmethod
    def sqlite(cls, path: str | Path) -> Store:
        """A store in a SQLite file, made (with its folder) when missing."""
        path = Path(path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(sa.URL.create("sqlite", database=str(path)))

    def close(self) -> None:
        """Close the pool's connections; the store cannot be used afterwards."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.name!r})"

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers a trivial query now."""
        with self._session() as session:
            session.execute(sa.text("SELECT 1"))

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self._closed:
            raise RuntimeError(f"the store for {self.name} is closed")
        with (unavailable_as(self.name), Session(self._writer if write else self._engine) as session,
              session.begin()):
            yield session

    def _insert_once(self, session: Session, model: type[Base], values: dict[str, Any],
                     unique: Sequence[str]) -> int | None:
        """Insert unless a row with the same ``unique`` columns exists; the new id or None.

        The database's unique constraint decides (INSERT ... ON CONFLICT DO NOTHING), so two
        callers racing cannot both win, as they could with a check followed by an insert."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = (dialect.insert(model).values(values)
                     .on_conflict_do_nothing(index_elements=list(unique)).returning(model.id))  # type: ignore[attr-defined]
        return session.execute(statement).scalar_one_or_none()

    # -- inspections -------------------------------------------------------------------------

    def add_inspection(self, record: InspectionRecord) -> int:
        """Store one inspection; its new id (``record.id`` is ignored and left unchanged)."""
        return self.add_inspections([record])[0]

    def add_inspections(self, records: Sequence[InspectionRecord]) -> list[int]:
        """Store several inspections in one transaction (all or none); their ids, in order."""
        if not records:
            return []
        rows = [InspectionRow(**_values(r)) for r in records]
        with self._session(write=True) as session:
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def add_file_inspection(self, record: InspectionRecord, path: str, size: int, mtime_ns: int) -> int:
        """Store the inspection of a claimed file and mark the file finished with it, in one
        transaction: a crash leaves either both or neither, so the file is judged exactly once."""
        with self._session(write=True) as session:
            row = InspectionRow(**_values(record))
            session.add(row)
            session.flush()
            self._finish(session, path, size, mtime_ns, row.id, None)
            return row.id

    def get_inspection(self, inspection_id: int) -> InspectionRecord | None:
        with self._session() as session:
            row = session.get(InspectionRow, inspection_id)
            return None if row is None else _record(row, InspectionRecord)

    def _select(self, where: InspectionFilter | None, newest_first: bool) -> sa.Select[tuple[InspectionRow]]:
        # id breaks ties between equal times, so pages never skip or repeat a row.
        row = InspectionRow
        order = (row.created_at.desc(), row.id.desc()) if newest_first else (row.created_at, row.id)
        return sa.select(InspectionRow).where(*inspections.conditions(where)).order_by(*order)

    def query_inspections(self, where: InspectionFilter | None = None, limit: int = 100, offset: int = 0,
                          newest_first: bool = True) -> list[InspectionRecord]:
        """One page of the inspections the filter selects, newest first unless asked otherwise."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        with self._session() as session:
            rows = session.scalars(self._select(where, newest_first).limit(limit).offset(offset))
            return [_record(row, InspectionRecord) for row in rows]

    def count_inspections(self, where: InspectionFilter | None = None) -> int:
        with self._session() as session:
            query = sa.select(sa.func.count()).select_from(InspectionRow).where(*inspections.conditions(where))
            return session.execute(query).scalar_one()

    def review_inspection(self, inspection_id: int, status: str, label: str | None = None,
                          by: str | None = None) -> bool:
        """Record an operator's review (now); False when there is no such inspection."""
        if status not in REVIEW_STATUSES:
            raise ValueError(f"status must be one of {REVIEW_STATUSES}, got {status!r}")
        with self._session(write=True) as session:
            result = session.execute(
                sa.update(InspectionRow).where(InspectionRow.id == inspection_id)
                .values(review_status=status, review_label=label, reviewed_by=by, reviewed_at=utcnow()))
            return result.rowcount == 1  # type: ignore[attr-defined]

    # -- reviews with regions (revision 0002) ------------------------------------------------

    def save_review(self, inspection_id: int, status: str, regions: list[dict[str, Any]] | None,
                    action: ReviewActionRecord | None = None, label: str | None = None,
                    by: str | None = None) -> bool:
        """Record a review with the regions it left (``[]``: the part is normal) and, in the same
        transaction, the action that ended it; False when there is no such inspection."""
        if status not in REVIEW_STATUSES:
            raise ValueError(f"status must be one of {REVIEW_STATUSES}, got {status!r}")
        with self._session(write=True) as session:
            result = session.execute(
                sa.update(InspectionRow).where(InspectionRow.id == inspection_id)
                .values(review_status=status, review_label=label, reviewed_by=by, reviewed_at=utcnow(),
                        reviewed_regions=regions))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if action is not None:
                session.add(ReviewActionRow(**_values(action)))
            return True

    def add_review_action(self, action: ReviewActionRecord) -> int | None:
        """Keep one review action; its id, or None when there is no such inspection."""
        with self._session(write=True) as session:
            if session.get(InspectionRow, action.inspection_id) is None:
                return None
            row = ReviewActionRow(**_values(action))
            session.add(row)
            session.flush()
            return row.id

    def list_review_actions(self, inspection_id: int | None = None, limit: int = 1000) -> list[ReviewActionRecord]:
        """Review actions, oldest first (of one inspection, or of all)."""
        query = sa.select(ReviewActionRow).order_by(ReviewActionRow.at, ReviewActionRow.id).limit(limit)
        if inspection_id is not None:
            query = query.where(ReviewActionRow.inspection_id == inspection_id)
        with self._session() as session:
            return [_record(row, ReviewActionRecord) for row in session.scalars(query)]

    @staticmethod
    def _queue_conditions() -> list[sa.ColumnElement[bool]]:
        return inspections.conditions(InspectionFilter(decision="anomalous", unreviewed_only=True))

    def review_queue(self, limit: int = 50, offset: int = 0) -> list[InspectionRecord]:
        """Flagged, unreviewed inspections, most uncertain first: smallest |A - threshold|, then
        newest (a label there teaches the most)."""
        row = InspectionRow
        query = (sa.select(row).where(*self._queue_conditions())
                 .order_by(sa.func.abs(row.a - row.threshold), row.created_at.desc(), row.id.desc())
                 .limit(limit).offset(offset))
        with self._session() as session:
            return [_record(r, InspectionRecord) for r in session.scalars(query)]

    def count_review_queue(self) -> int:
        with self._session() as session:
            query = sa.select(sa.func.count()).select_from(InspectionRow).where(*self._queue_conditions())
            return session.execute(query).scalar_one()

    def reviewed_inspections(self, limit: int | None = None) -> list[InspectionRecord]:
        """Every reviewed inspection (any status), oldest review first."""
        row = InspectionRow
        query = (sa.select(row).where(row.review_status.is_not(None))
                 .order_by(row.reviewed_at, row.id).execution_options(yield_per=_STREAM_BATCH))
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_record(r, InspectionRecord) for r in session.scalars(query)]

    def descriptor_samples(self, labelled: int = 5000, passing: int = 500) -> list[DescriptorSample]:
        """What the new-kind rule's known kinds are fitted on (``service/known_kinds.py``): the
        newest ``labelled`` inspections with a descriptor that a model or a person labelled (a
        ``defect:<kind>`` verdict, or any review), then the newest ``passing`` unreviewed ones
        that passed; newest first within each."""
        row = InspectionRow
        columns = (row.descriptor, row.decision, row.verdict, row.review_status, row.review_label)
        newest = (row.created_at.desc(), row.id.desc())
        ok = sa.and_(row.decision == "normal", row.verdict == "ok", row.review_status.is_(None))
        with self._session() as session:  # LABELLED is its partial index's WHERE (tables.py): keep it whole
            return [DescriptorSample(*r) for query in (
                sa.select(*columns).where(LABELLED).order_by(*newest).limit(labelled),
                sa.select(*columns).where(row.descriptor.is_not(None), ok).order_by(*newest).limit(passing))
                for r in session.execute(query).tuples()]

    def stats(self, since: datetime | None = None, until: datetime | None = None,
              bucket: str = "hour") -> list[dict[str, Any]]:
        """Per UTC bucket ("minute", "hour" or "day") in [since, until): ``bucket`` (its start),
        ``total``, ``ok``, ``anomaly``, ``defects`` ({kind: count}) and ``yield`` (ok / total).

        Bucketing happens here in Python over streamed (created_at, verdict) pairs: SQLite and
        PostgreSQL truncate times with different functions (strftime vs date_trunc), and
        PostgreSQL's would follow the session's time zone, so SQL bucketing could disagree
        between the two. Two small columns stream cheaply even for weeks of a busy line."""
        inspections.check_bucket(bucket)
        window = InspectionFilter(since=since, until=until)
        query = (sa.select(InspectionRow.created_at, InspectionRow.verdict)
                 .where(*inspections.conditions(window)).execution_options(yield_per=_STREAM_BATCH))
        with self._session() as session:
            return inspections.tally(session.execute(query).tuples(), bucket)

    def export_csv(self, where: InspectionFilter | None, fileobj: IO[str]) -> int:
        """Write the selected inspections (oldest first) as CSV with a header to an open text
        file, streaming in batches; the number of rows written. Open files with ``newline=""``."""
        writer = csv.writer(fileobj)
        writer.writerow(inspections.CSV_FIELDS)
        count = 0
        query = self._select(where, newest_first=False).execution_options(yield_per=_STREAM_BATCH)
        with self._session() as session:
            for row in session.scalars(query):
                writer.writerow(inspections.csv_cells(_record(row, InspectionRecord)))
                count += 1
        return count

    # -- alerts ------------------------------------------------------------------------------

    def add_alert(self, record: AlertRecord) -> int | None:
        """Raise an alert once: its id, or None when an alert with this key exists already."""
        with self._session(write=True) as session:
            return self._insert_once(session, AlertRow, _values(record), ["key"])

    def has_alert(self, key: str) -> bool:
        """Whether an alert with this key was raised (the alert engine's ``already_raised``)."""
        with self._session() as session:
            return session.execute(sa.select(AlertRow.id).where(AlertRow.key == key)).first() is not None

    def list_alerts(self, unacknowledged_only: bool = False, limit: int = 100) -> list[AlertRecord]:
        """Alerts, newest first."""
        query = sa.select(AlertRow).order_by(AlertRow.created_at.desc(), AlertRow.id.desc()).limit(limit)
        if unacknowledged_only:
            query = query.where(AlertRow.acknowledged_at.is_(None))
        with self._session() as session:
            return [_record(row, AlertRecord) for row in session.scalars(query)]

    def acknowledge_alert(self, alert_id: int, by: str) -> bool:
        """Acknowledge an alert now; False when there is no such alert or it was acknowledged
        already (the first acknowledgement is kept)."""
        with self._session(write=True) as session:
            result = session.execute(
                sa.update(AlertRow).where(AlertRow.id == alert_id, AlertRow.acknowledged_at.is_(None))
                .values(acknowledged_at=utcnow(), acknowledged_by=by))
            return result.rowcount == 1  # type: ignore[attr-defined]

    # -- processed files (folder watcher) ----------------------------------------------------

    def claim_file(self, path: str, size: int, mtime_ns: int) -> bool:
        """True for the first claim of this version of a file (path, size, mtime), False for
        every later one, across threads, processes and restarts."""
        values = {"path": str(path), "size": size, "mtime_ns": mtime_ns, "claimed_at": utcnow()}
        with self._session(write=True) as session:
            return self._insert_once(session, ProcessedFileRow, values, ["path", "size", "mtime_ns"]) is not None

    def finish_file(self, path: str, size: int, mtime_ns: int, inspection_id: int | None,
                    error: str | None = None) -> None:
        """Mark a claimed file done, with its inspection or the error that stopped it."""
        with self._session(write=True) as session:
            self._finish(session, path, size, mtime_ns, inspection_id, error)

    @staticmethod
    def _finish(session: Session, path: str, size: int, mtime_ns: int, inspection_id: int | None,
                error: str | None) -> None:
        result = session.execute(
            sa.update(ProcessedFileRow)
            .where(ProcessedFileRow.path == str(path), ProcessedFileRow.size == size,
                   ProcessedFileRow.mtime_ns == mtime_ns)
            .values(finished_at=utcnow(), inspection_id=inspection_id, error=error))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LookupError(f"{path} (size {size}, mtime_ns {mtime_ns}) was never claimed")

    def unfinished_files(self) -> list[ProcessedFile]:
        """Files claimed but never finished (the process died mid-file), oldest claim first.
        ``claim_file`` refuses these (already claimed): the watcher redoes them from this list."""
        query = (sa.select(ProcessedFileRow).where(ProcessedFileRow.finished_at.is_(None))
                 .order_by(ProcessedFileRow.claimed_at, ProcessedFileRow.id))
        with self._session() as session:
            return [_record(row, ProcessedFile) for row in session.scalars(query)]

    def is_processed(self, path: str, size: int, mtime_ns: int) -> bool:
        """True when this version of the file was claimed and finished (with or without error)."""
        query = sa.select(ProcessedFileRow.id).where(
            ProcessedFileRow.path == str(path), ProcessedFileRow.size == size,
            ProcessedFileRow.mtime_ns == mtime_ns, ProcessedFileRow.finished_at.is_not(None))
        with self._session() as session:
            return session.execute(query).first() is not None

    # -- model versions ----------------------------------------------------------------------

    def register_model(self, version: str, kind: str, path: str | Path,
                       details: dict[str, Any] | None = None) -> ModelVersionRecord:
        """Record a model version (idempotent: registering a known version again changes nothing
        and returns the record stored first)."""
        record = ModelVersionRecord(version=version, kind=kind, path=str(path), details=details or {})
        with self._session(write=True) as session:
            self._insert_once(session, ModelVersionRow, _values(record), ["version"])
            row = session.scalars(sa.select(ModelVersionRow).where(ModelVersionRow.version == version)).one()
            return _record(row, ModelVersionRecord)

    def list_models(self) -> list[ModelVersionRecord]:
        """Every registered model version, newest first."""
        query = sa.select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc(), ModelVersionRow.id.desc())
        with self._session() as session:
            return [_record(row, ModelVersionRecord) for row in session.scalars(query)]
