"""The CSV export streamed: the store writes it in one transaction on a thread of its own, the
HTTP response sends it in chunks as they come (and stops the writer when the client goes away)."""

import io
import queue
import threading
from collections.abc import Iterator

from .pipeline import Line
from .store import InspectionFilter


class _Cancelled(Exception):
    pass


class _CsvPipe(io.TextIOBase):
    """A text file whose writes go, in chunks, into a queue read by the HTTP response."""

    CHUNK = 64 * 1024

    def __init__(self, out: queue.Queue, cancelled: threading.Event) -> None:
        self.out, self.cancelled = out, cancelled
        self._parts: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._parts.append(s)
        self._size += len(s)
        if self._size >= self.CHUNK:
            self.send()
        return len(s)

    def send(self) -> None:
        if not self._parts:
            return
        chunk = "".join(self._parts).encode("utf-8")
        self._parts, self._size = [], 0
        while True:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                self.out.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue


def stream_csv(line: Line, where: InspectionFilter) -> Iterator[bytes]:
    """The store's CSV export (one transaction) written on its own thread, sent as it comes."""
    out: queue.Queue = queue.Queue(maxsize=8)
    cancelled = threading.Event()
    done = object()

    def produce() -> None:
        pipe = _CsvPipe(out, cancelled)
        try:
            line.store.get().export_csv(where, pipe)
            pipe.send()
            out.put(done)
        except _Cancelled:
            pass
        except Exception as exc:  # noqa: BLE001  raised again on the response's side
            out.put(exc)

    threading.Thread(target=produce, name="aoiflow-export", daemon=True).start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        cancelled.set()
