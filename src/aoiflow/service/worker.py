"""One inference thread behind a bounded queue.

Inference is CPU-bound and torch already uses every thread it is given, so inspections run one at
a time, in arrival order, on one thread; the event loop only waits for their futures. A full queue
refuses at once (``QueueFull``: the API answers 503 with Retry-After) instead of letting latency
grow without bound; the folder watcher waits for room instead (``submit(wait=...)``).
Control jobs (swapping the model) are never refused and run between two inspections.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The inspection queue is full; ``retry_after`` is an estimate of when there is room (s)."""

    def __init__(self, capacity: int, retry_after: int) -> None:
        super().__init__(f"the inspection queue is full ({capacity} waiting); retry in about {retry_after} s")
        self.capacity, self.retry_after = capacity, retry_after


class WorkerClosed(RuntimeError):
    """The service is shutting down."""


@dataclass
class _Job:
    fn: Callable[[float], Any]  # called with the seconds the job waited in the queue
    bounded: bool
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class InferenceWorker:
    """Runs submitted jobs one at a time on its own thread; at most ``capacity`` inspections wait."""

    def __init__(self, capacity: int, name: str = "aoiflow-inference",
                 on_depth: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"the queue needs room for at least one inspection, got {capacity}")
        self.capacity = capacity
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = 0  # bounded jobs in the queue
        self._seconds = 0.1  # running mean of a job's time, for Retry-After
        self._on_depth = on_depth or (lambda depth: None)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Inspections waiting (not counting the one running)."""
        return self._waiting

    def submit(self, fn: Callable[[float], Any], wait: float = 0.0) -> Future:
        """Queue an inspection; waits up to ``wait`` s for room, then raises ``QueueFull``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._waiting < self.capacity, wait):
                raise QueueFull(self.capacity, max(1, math.ceil(self._seconds * (self._waiting + 1))))
            return self._put(_Job(fn, bounded=True))

    def call(self, fn: Callable[[float], Any]) -> Future:
        """Queue a control job (never refused for lack of room)."""
        with self._cond:
            return self._put(_Job(fn, bounded=False))

    def _put(self, job: _Job) -> Future:
        if self._closed:
            raise WorkerClosed("the service is shutting down")
        self._jobs.append(job)
        self._waiting += job.bounded
        self._on_depth(self._waiting)
        self._cond.notify_all()
        return job.future

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._waiting -= job.bounded
                self._on_depth(self._waiting)
                self._cond.notify_all()
            if not job.future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                job.future.set_result(job.fn(started - job.queued_at))
            except BaseException as exc:  # noqa: BLE001  handed to whoever waits on the future
                job.future.set_exception(exc)
            if job.bounded:
                self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - started)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, finish the queued ones (up to ``timeout`` s), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            for job in self._jobs:
                job.future.set_exception(WorkerClosed("the service shut down before this inspection ran"))
            self._jobs.clear()
            self._waiting = 0
        if self._thread.is_alive():
            log.warning("the inference thread is still busy after %.0f s; leaving it", timeout)
