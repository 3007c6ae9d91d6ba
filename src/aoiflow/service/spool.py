"""When the database is away: the store opened lazily, and a retry spool for what was judged meanwhile.

The service keeps judging parts while the database is down (a line does not stop for a database
restart). A record whose write failed goes into DATA_DIR/spool.jsonl, one JSON line each,
flushed and fsynced, and is written to the database, in order, once it answers again; the spool
survives a restart of the service too. What is lost in the worst case: nothing judged. What can
double: a record whose database write succeeded in the instant before a crash that stopped the
spool from dropping it (the window is one record wide).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from aoiflow.fileio import atomic_write_text

from .store import AlertRecord, InspectionRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)


class StoreHandle:
    """The store, opened on first use and tried again while it cannot be (the database may be
    down when the service starts). ``get()`` raises ``StoreUnavailable`` meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        self._store: Store | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._store is not None

    def get(self) -> Store:
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = Store(self.url)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot spool {type(value).__name__}")


def record_to_json(record: InspectionRecord | AlertRecord) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(record), default=_jsonable))


def _times(d: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {**d, **{n: datetime.fromisoformat(d[n]) for n in names if d.get(n)}}


def inspection_from_json(d: dict[str, Any]) -> InspectionRecord:
    return InspectionRecord(**_times(d, ("created_at", "reviewed_at")))


def alert_from_json(d: dict[str, Any]) -> AlertRecord:
    return AlertRecord(**_times(d, ("created_at", "acknowledged_at")))


class RetrySpool:
    """Entries (JSON-safe dicts) waiting for the database, in a JSON-lines file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rejected = self.path.with_name(self.path.stem + ".rejected.jsonl")
        self._lock = threading.Lock()        # the file
        self._flushing = threading.Lock()    # one flush at a time
        self._count = len(self._read())

    def __len__(self) -> int:
        return self._count

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        entries = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a power cut: the rest is still good
                log.warning("%s line %d is not JSON (cut short?); skipped", self.path, n)
        return entries

    def add(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, default=_jsonable) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self._count += 1

    def flush(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """``apply`` each entry in order until one raises ``StoreUnavailable``; drop those done
        (entries added meanwhile stay). The number written."""
        with self._flushing:
            with self._lock:
                entries = self._read()
            done = 0
            try:
                for entry in entries:
                    try:
                        apply(entry)
                    except StoreUnavailable:
                        raise
                    except Exception:  # a record the database refuses would block every later one
                        log.exception("a spooled record was refused; kept in %s", self.rejected)
                        with open(self.rejected, "a", encoding="utf-8") as f:
                            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    done += 1
            except StoreUnavailable as exc:
                log.info("database still unavailable; %d record(s) wait in %s (%s)", len(entries) - done,
                         self.path, exc)
            finally:
                if done:
                    with self._lock:
                        rest = self._read()[done:]
                        atomic_write_text(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                                             for e in rest))
                        self._count = len(rest)
            return done
