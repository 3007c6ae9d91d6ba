"""Live events: every verdict, alert and unreadable frame the line publishes (``Line.events``),
which the API streams to the operator pages as server-sent events (``api_events.py``)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class EventHub:
    """Live events for the operator pages (``GET /api/v1/events``, server-sent events).

    ``publish`` may be called from any thread (the inference thread, alert sinks); each open stream
    is a ``Subscription`` with its own bounded queue on its event loop, so a slow browser only
    loses its own events (``lagged``), never slows the line. The last ``keep`` events stay, so a
    stream that reconnects with the id of the last event it saw (Last-Event-ID) misses none."""

    def __init__(self, keep: int = 256, per_subscriber: int = 256) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._recent: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=keep)
        self._subs: set[Subscription] = set()
        self._per_subscriber = per_subscriber

    def publish(self, kind: str, data: dict[str, Any]) -> int:
        """Send an event to every open stream; its id."""
        with self._lock:
            self._seq += 1
            event = (self._seq, kind, data)
            self._recent.append(event)
            subs = list(self._subs)
        for sub in subs:
            sub.offer(event)
        return event[0]

    def subscribe(self, last_id: int | None = None) -> Subscription:
        """A new stream (call on its event loop), first given the kept events after ``last_id``."""
        import asyncio

        sub = Subscription(asyncio.get_running_loop(), self._per_subscriber)
        with self._lock:
            if last_id is not None:
                for event in self._recent:
                    if event[0] > last_id:
                        sub._put(event)
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def last_id(self) -> int:
        return self._seq


class Subscription:
    """One open event stream: an asyncio queue fed from other threads."""

    def __init__(self, loop: Any, size: int) -> None:
        import asyncio

        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue(maxsize=size)
        self.lagged = 0

    def offer(self, event: tuple[int, str, dict[str, Any]]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the stream's loop has closed
            pass

    def _put(self, event: tuple[int, str, dict[str, Any]]) -> None:
        if self.queue.full():
            self.lagged += 1
            return
        self.queue.put_nowait(event)
