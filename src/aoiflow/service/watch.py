"""The folder watcher: every image a camera drops into a folder is judged once, also across restarts.

watchdog reports new and changed files; a file is taken only once it has kept its size and mtime
for ``settle_s`` seconds and can be opened (a camera or a network copy may still be writing it).
Then it is claimed in the store (``Store.claim_file``: one row per path, size and mtime, so a
second claim of the same version fails, across threads, processes and restarts) and queued for
the inference thread, which stores its inspection and marks the file finished in one transaction.

On start, before any new file: records spooled while the database was away are written (they
finish their files), files claimed but never finished (the service died mid-file) are redone,
and the folder is scanned for files that arrived while the service was down. A periodic rescan
(``rescan_s``) catches anything an event was missed for (e.g. on network shares).

One service per watched folder: a second instance would redo the first one's in-flight files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from aoiflow.data import IMAGE_SUFFIXES

from .keeper import FileKey
from .store import StoreUnavailable

if TYPE_CHECKING:
    from .pipeline import Line

log = logging.getLogger(__name__)

TICK_S = 0.1
MAX_REMEMBERED = 100_000  # file versions known done, so a rescan asks the database only about new ones


def is_candidate(path: Path) -> bool:
    """An image by its suffix, not hidden (cameras and copy tools write '.name.tmp' first)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p and event.event_type != "deleted":
                self.watcher.note(Path(os.fsdecode(p)))


class FolderWatcher:
    """Watches ``folder`` (recursively) and hands each settled new image to ``line`` once."""

    def __init__(self, line: Line, folder: str | Path, settle_s: float = 0.5, rescan_s: float = 30.0) -> None:
        self.line, self.settle_s, self.rescan_s = line, settle_s, rescan_s
        self.folder = Path(folder).expanduser().resolve()
        self._pending: dict[Path, tuple[tuple[int, int], float] | None] = {}
        self._done: OrderedDict[FileKey, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._run, name="aoiflow-watch", daemon=True)
        self.submitted = 0

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_Events(self), str(self.folder), recursive=True)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(5)
        if self._thread.is_alive():
            self._thread.join(30)

    def note(self, path: Path) -> None:
        """A file appeared or changed: (re)start its settling clock."""
        if is_candidate(path):
            with self._lock:
                self._pending[path] = None

    # -- the watcher thread ------------------------------------------------------------------

    def _run(self) -> None:
        if not self._catch_up():
            return
        next_scan = time.monotonic() + self.rescan_s
        while not self._stop.wait(TICK_S):
            try:
                self._settle()
                if self.rescan_s and time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self.rescan_s
            except Exception:
                log.exception("the folder watcher hit an error; carrying on")

    def _catch_up(self) -> bool:
        """Spool first, then unfinished files, then what arrived while down; retried until the
        database answers. False when stopped first."""
        while not self._stop.is_set():
            try:
                self.line.keeper.retry()
                if len(self.line.spool) == 0:
                    self._redo_unfinished()
                    self._scan()
                    return True
            except StoreUnavailable as exc:
                log.info("folder watcher waits for the database: %s", exc)
            except Exception:
                log.exception("the folder watcher could not catch up; trying again")
            self._stop.wait(1.0)
        return False

    def _redo_unfinished(self) -> None:
        store = self.line.store.get()
        for f in store.unfinished_files():
            path = Path(f.path)
            key = FileKey(f.path, f.size, f.mtime_ns)
            if not path.is_relative_to(self.folder):
                continue  # another watched folder's, from an earlier configuration
            st = _stat(path)
            if st is None or (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
                # gone, or rewritten (the new version is new work that the scan finds)
                store.finish_file(f.path, f.size, f.mtime_ns, None, "changed or removed before it was judged")
                continue
            log.info("redoing %s (claimed, never finished)", path)
            self._submit(path, key)

    def _scan(self) -> None:
        for path in sorted(self.folder.rglob("*")):
            if is_candidate(path) and path.is_file():
                with self._lock:
                    self._pending.setdefault(path, None)

    def _settle(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._pending.items())
        for path, state in items:
            if self._stop.is_set():
                return
            st = _stat(path)
            if st is None:
                self._forget(path)
                continue
            version = (st.st_size, st.st_mtime_ns)
            if FileKey(str(path), *version) in self._done:
                self._forget(path)
                continue
            if state is None or state[0] != version:
                with self._lock:
                    self._pending[path] = (version, now)
                continue
            if now - state[1] < self.settle_s or not _readable(path):
                continue
            try:
                self._take(path, FileKey(str(path), *version))
            except StoreUnavailable as exc:
                log.info("%s waits for the database: %s", path, exc)
                return  # stays pending; tried again next tick
            self._forget(path, version)

    def _forget(self, path: Path, version: tuple[int, int] | None = None) -> None:
        with self._lock:
            state = self._pending.get(path)
            # keep it when it changed again meanwhile (an event reset it to None)
            if version is None or (state is not None and state[0] == version):
                self._pending.pop(path, None)

    def _take(self, path: Path, key: FileKey) -> None:
        store = self.line.store.get()
        if not store.is_processed(key.path, key.size, key.mtime_ns) and store.claim_file(key.path, key.size,
                                                                                          key.mtime_ns):
            self._submit(path, key)
        self._remember(key)

    def _submit(self, path: Path, key: FileKey) -> None:
        if self.line.submit_file(path, key, self._stop):
            self.submitted += 1

    def _remember(self, key: FileKey) -> None:
        self._done[key] = None
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st if path.is_file() else None


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False
