"""Keeping what the line judged: each record written to the store, or to the retry spool while
the database is away, and from the spool to the store, in order, once it answers again (on a
retry thread). Model versions are registered the same way."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .metrics import Metrics
from .spool import (
    RetrySpool,
    StoreHandle,
    alert_from_json,
    inspection_from_json,
    record_to_json,
)
from .store import AlertRecord, InspectionRecord, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileKey:
    """One version of a watched file, as the store's processed-files table keys it."""

    path: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


class RecordKeeper:
    """The store or, while it is away, the spool: every write of the line goes through here."""

    def __init__(self, store: StoreHandle, spool: RetrySpool, metrics: Metrics, retry_s: float) -> None:
        self.store, self.spool, self.metrics, self.retry_s = store, spool, metrics, retry_s
        self._models: dict[str, dict[str, Any]] = {}  # version -> registration not yet in the store
        self._down_until = 0.0  # until then the database counts as away: records go straight to the spool
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None

    # -- the retry loop ------------------------------------------------------------------------

    def start_retrying(self) -> None:
        """Write what waits now, then keep trying every ``retry_s`` on a thread of its own."""
        self.retry()
        self._retry_thread = threading.Thread(target=self._retry_loop, name="aoiflow-retry", daemon=True)
        self._retry_thread.start()

    def stop_retrying(self) -> None:
        self._stop.set()
        if self._retry_thread is not None:
            self._retry_thread.join(30)

    def retry(self) -> int:
        """Open the store if needed, register models, write spooled records; how many written."""
        try:
            self.store.get()
        except StoreUnavailable:
            return 0
        self._register_models()
        written = self.spool.flush(self._apply) if len(self.spool) else 0
        self.metrics.spooled.set(len(self.spool))
        if not len(self.spool):
            self._down_until = 0.0
        return written

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            if len(self.spool) or self._models or not self.store.opened:
                try:
                    self.retry()
                except Exception:
                    log.exception("retrying the spool failed")

    def _database_away(self) -> bool:
        """True for ``retry_s`` after a write failed: the inference thread then does not wait
        on a database that is down (a PostgreSQL host that does not answer costs seconds per
        try); the retry loop finds out when it is back."""
        return time.monotonic() < self._down_until

    def _went_away(self, exc: StoreUnavailable) -> None:
        if not self._database_away():
            log.warning("%s; records wait in %s until it is back", exc, self.spool.path)
        self._down_until = time.monotonic() + self.retry_s

    # -- writes --------------------------------------------------------------------------------

    def register_models(self, models: dict[str, dict[str, Any]]) -> None:
        """Register model versions ({version: {kind, path, details}}) now, or once the store is back."""
        self._models.update(models)
        self._register_models()

    def _register_models(self) -> None:
        for version, m in list(self._models.items()):
            try:
                self.store.get().register_model(version, m["kind"], m["path"], m["details"])
            except StoreUnavailable:
                return
            self._models.pop(version, None)

    def keep_inspection(self, record: InspectionRecord, claimed: FileKey | None) -> int | None:
        """Store the inspection (finishing the claimed file with it); its id, or None when spooled."""
        if not self._database_away():
            try:
                store = self.store.get()
                if claimed is not None:
                    return store.add_file_inspection(record, claimed.path, claimed.size, claimed.mtime_ns)
                return store.add_inspection(record)
            except StoreUnavailable as exc:
                self._went_away(exc)
        self.metrics.error("store_unavailable")
        self._spool({"type": "inspection", "record": record_to_json(record),
                     "file": claimed.to_json() if claimed else None})
        return None

    def finish_unreadable_file(self, claimed: FileKey, reason: str) -> None:
        """Mark a claimed file finished without an inspection, with why."""
        try:
            if self._database_away():
                raise StoreUnavailable("the database is away")
            self.store.get().finish_file(claimed.path, claimed.size, claimed.mtime_ns, None, reason)
        except StoreUnavailable:
            self._spool({"type": "file_error", "file": claimed.to_json(), "error": reason})

    def keep_alert(self, record: AlertRecord) -> tuple[bool, int | None]:
        """(stored, the store's id: None for an alert it had already) or (False, None) when spooled."""
        if not self._database_away():
            try:
                return True, self.store.get().add_alert(record)
            except StoreUnavailable as exc:
                self._went_away(exc)
        self._spool({"type": "alert", "record": record_to_json(record)})
        return False, None

    def already_raised(self, key: str) -> bool:
        """The alert engine's ``already_raised``: False while the database is away."""
        if self._database_away():
            return False
        try:
            return self.store.get().has_alert(key)
        except StoreUnavailable as exc:
            self._went_away(exc)
            return False

    def _spool(self, entry: dict[str, Any]) -> None:
        self.spool.add(entry)
        self.metrics.spooled.set(len(self.spool))

    def _apply(self, entry: dict[str, Any]) -> None:
        store = self.store.get()
        kind, file = entry["type"], entry.get("file")
        if kind == "inspection":
            record = inspection_from_json(entry["record"])
            if file:
                store.add_file_inspection(record, file["path"], file["size"], file["mtime_ns"])
            else:
                store.add_inspection(record)
        elif kind == "alert":
            store.add_alert(alert_from_json(entry["record"]))
        elif kind == "file_error":
            store.finish_file(file["path"], file["size"], file["mtime_ns"], None, entry["error"])
        else:
            raise ValueError(f"unknown spool entry type {kind!r}")
