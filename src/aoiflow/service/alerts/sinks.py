"""Where alerts go: a JSON-lines file, a callback (the service's store), a webhook, MQTT.

``deliver(alert)`` must return quickly: the webhook posts from a background thread with a
bounded queue, MQTT publishes through paho's own network thread. Every sink counts what it
delivered and what failed; the engine shields the line and the other sinks from a failing one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .events import Alert, json_safe

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 425, 429}  # client errors worth retrying; every 5xx is retried too


class Sink(ABC):
    """Delivers alerts somewhere."""

    name: str = "sink"

    @abstractmethod
    def deliver(self, alert: Alert) -> None:
        """Send one alert (quickly; raise on a failure the engine should count)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is delivered or given up; True when done in time."""
        return True

    def close(self) -> None:
        """Release resources."""


class JsonLinesSink(Sink):
    """Appends one JSON line per alert to ``path``, flushed and fsynced (survives a power cut)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.delivered = 0

    def deliver(self, alert: Alert) -> None:
        line = json.dumps(alert.to_dict(), ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self.delivered += 1


class CallbackSink(Sink):
    """Calls ``fn(alert)``; the service passes its store's add function."""

    name = "callback"

    def __init__(self, fn: Callable[[Alert], Any]) -> None:
        self.fn = fn
        self.delivered = 0

    def deliver(self, alert: Alert) -> None:
        self.fn(alert)
        self.delivered += 1


class WebhookSink(Sink):
    """POSTs each alert as JSON to ``url`` from a background thread.

    ``retries`` more attempts after the first on a transport error, a 5xx or 408/425/429, waiting
    ``backoff_s * 2**i`` before the i-th retry; other 4xx are not retried. The queue holds at most
    ``max_queue`` alerts: when full the oldest is dropped and counted, so a slow or dead webhook
    never blocks the line. Counters: ``delivered``, ``failed`` (gave up), ``dropped``, ``attempts``.
    """

    name = "webhook"

    def __init__(self, url: str, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None, max_queue: int = 1000) -> None:
        if retries < 0 or backoff_s < 0 or timeout_s <= 0 or max_queue < 1:
            raise ValueError("need retries >= 0, backoff_s >= 0, timeout_s > 0 and max_queue >= 1")
        self.url, self.retries, self.backoff_s, self.max_queue = url, retries, backoff_s, max_queue
        self.delivered = self.failed = self.dropped = self.attempts = 0
        self._client = httpx.Client(timeout=timeout_s, headers=dict(headers or {}))
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aoiflow-webhook", daemon=True)
        self._thread.start()

    def deliver(self, alert: Alert) -> None:
        self.post(alert.to_dict())

    def post(self, payload: Mapping[str, Any]) -> None:
        """Queue any JSON-safe payload for delivery."""
        with self._cond:
            if self._closed:
                raise RuntimeError("WebhookSink is closed")
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                log.warning("webhook queue full (%d): dropped the oldest alert", self.max_queue)
            self._queue.append(dict(payload))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stop.is_set())
                if self._stop.is_set():
                    return
                payload = self._queue.popleft()
                self._busy = True
            try:
                self._send(payload)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, payload: dict[str, Any]) -> None:
        problem, tried = "not tried", 0
        for attempt in range(self.retries + 1):
            if attempt and self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                problem += "; closed during back-off"
                break
            self.attempts += 1
            tried += 1
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                self.delivered += 1
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                break
        self.failed += 1
        log.warning("webhook %s: gave up on alert %s after %d attempt(s): %s",
                    self.url, payload.get("key"), tried, problem)

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is queued for up to ``timeout`` s, then stop (the rest is dropped)."""
        with self._cond:
            self._closed = True
        self.flush(timeout)
        with self._cond:
            self.dropped += len(self._queue)
            self._queue.clear()
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._client.close()


class MqttSink(Sink):
    """Publishes alerts to ``<prefix>/alerts`` and verdicts to ``<prefix>/verdicts`` (paho-mqtt 2).

    Connects asynchronously (``connect_async`` + ``loop_start``); paho's network thread reconnects
    with back-off between 1 and ``max_reconnect_s`` seconds. With qos >= 1 messages published while
    the broker is away are queued (up to ``max_queued``) and sent on reconnection.
    """

    name = "mqtt"

    def __init__(self, host: str, port: int = 1883, topic_prefix: str = "aoiflow", qos: int = 1,
                 client_id: str | None = None, keepalive: int = 30, max_queued: int = 1000,
                 max_reconnect_s: int = 30, username: str | None = None, password: str | None = None) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        self.topic_prefix, self.qos = topic_prefix.rstrip("/"), qos
        self.delivered = self.failed = 0
        self._connected = threading.Event()
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early: set[int] = set()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id or "")
        client.on_connect, client.on_disconnect, client.on_publish = (
            self._on_connect, self._on_disconnect, self._on_publish)
        client.reconnect_delay_set(min_delay=1, max_delay=max_reconnect_s)
        client.max_queued_messages_set(max_queued)
        if username is not None:
            client.username_pw_set(username, password)
        client.connect_async(host, port, keepalive)
        client.loop_start()
        self._client = client

    @property
    def alerts_topic(self) -> str:
        return f"{self.topic_prefix}/alerts"

    @property
    def verdicts_topic(self) -> str:
        return f"{self.topic_prefix}/verdicts"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected to the broker; True when connected in time."""
        return self._connected.wait(timeout)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if reason_code.is_failure:
            log.warning("MQTT disconnected (%s); paho reconnects", reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)  # acknowledged before publish() returned
            self.delivered += 1
            self._cond.notify_all()

    def _publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        body = json.dumps(json_safe(dict(payload)), ensure_ascii=False)
        # Not under self._cond: paho calls on_publish holding its own lock, which publish() takes too.
        info = self._client.publish(topic, body, qos=self.qos)
        queued = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and self.qos > 0)
        if not queued:
            self.failed += 1
            raise RuntimeError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)

    def deliver(self, alert: Alert) -> None:
        self._publish(self.alerts_topic, alert.to_dict())

    def publish_verdict(self, verdict: Mapping[str, Any]) -> None:
        """Publish one part's verdict (e.g. inspection id, decision, verdict) for a PLC to act on."""
        self._publish(self.verdicts_topic, verdict)

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` s for queued messages, then disconnect."""
        if not self.flush(timeout):
            log.warning("MQTT: closing with %d message(s) not acknowledged by the broker", len(self._pending))
        self._client.disconnect()
        self._client.loop_stop()
