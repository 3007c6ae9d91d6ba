"""The alert rules as the line feeds them: one ``Observation`` per frame, alerts to their sinks
(the line's store, alerts.jsonl, MQTT, a webhook), the rules' state kept across restarts.

The rules: defect rates per kind (p-chart), drift of the normals (Page-Hinkley), input health and,
with ``settings.new_kind``, new kinds of anomaly (``NewAnomalyKind``), whose known kinds are
refitted from the store every ``new_kind_refit_every`` frames on a thread of their own, so the
store's queries never hold up a verdict (``known_kinds.py`` says which inspections count; until
enough passing parts are stored the rule waits).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aoiflow.fileio import atomic_write_text

from .alerts import (
    Alert,
    AlertEngine,
    CallbackSink,
    DefectRateChart,
    InputHealth,
    JsonLinesSink,
    KnownKinds,
    MqttSink,
    NewAnomalyKind,
    NormalDrift,
    Observation,
    WebhookSink,
    json_safe,
)
from .settings import ServiceSettings
from .store import StoreUnavailable

log = logging.getLogger(__name__)

ALERT_STATE = "alert_state.json"
SAVE_STATE_EVERY = 100  # observations between saves of the alert rules' state
VERDICT_KEYS = ("id", "created_at", "source", "file_name", "decision", "verdict", "kind", "confidence", "a",
                "threshold", "model_version", "stored")  # what MQTT gets of each verdict


class AlertFeed:
    """The alert engine with its rules and sinks, its state under ``root``. ``on_alert`` keeps
    each alert (the line's store); ``already_raised(key)`` asks the store about one;
    ``known_kinds()`` gives the new-kind rule's known kinds as they are now (None: not yet)."""

    def __init__(self, settings: ServiceSettings, root: Path, on_alert: Callable[[Alert], None],
                 already_raised: Callable[[str], bool],
                 known_kinds: Callable[[], KnownKinds | None] | None = None) -> None:
        self.root = root
        self.mqtt: MqttSink | None = None
        self.new_kind = (NewAnomalyKind(None, k=settings.new_kind_k, window=settings.new_kind_window,
                                        margin=settings.new_kind_margin) if settings.new_kind else None)
        self.engine = self._engine(settings, on_alert, already_raised)
        self._known_kinds, self._refit_every = known_kinds, settings.new_kind_refit_every
        self._lock = threading.Lock()  # the engine's rules: observed here, refitted on the refit thread
        self._refits = (ThreadPoolExecutor(1, thread_name_prefix="known-kinds")
                        if self.new_kind is not None and known_kinds is not None else None)
        self._refit: Future[None] | None = None
        self._observed = 0

    def _engine(self, s: ServiceSettings, on_alert: Callable[[Alert], None],
                already_raised: Callable[[str], bool]) -> AlertEngine:
        rules = [DefectRateChart(n=s.rate_window, baseline_n=s.rate_baseline_n), NormalDrift(),
                 InputHealth(window=s.input_health_window, limit=s.input_health_limit)]
        if self.new_kind is not None:
            rules.append(self.new_kind)
        sinks: list[Any] = [CallbackSink(on_alert), JsonLinesSink(self.root / "alerts.jsonl")]
        if s.mqtt_address is not None:
            self.mqtt = MqttSink(*s.mqtt_address, topic_prefix=s.mqtt_prefix)
            sinks.append(self.mqtt)
        if s.webhook:
            sinks.append(WebhookSink(s.webhook))
        engine = AlertEngine(rules, sinks, already_raised=already_raised)
        state = self.root / ALERT_STATE
        if state.is_file():
            try:
                engine.load_state_dict(json.loads(state.read_text()))
            except Exception:  # other rule settings, an older file: start the rules afresh
                log.exception("could not restore the alert rules' state from %s; starting afresh", state)
        return engine

    def refit_known_kinds(self) -> None:
        """Give the new-kind rule the known kinds ``known_kinds()`` has now, on the calling thread;
        when it fails or has none yet, the rule keeps what it had."""
        if self.new_kind is None or self._known_kinds is None:
            return
        try:
            known = self._known_kinds()
        except StoreUnavailable as exc:
            log.warning("could not refit the known anomaly kinds (%s); keeping the previous ones", exc)
            return
        except Exception:
            log.exception("could not refit the known anomaly kinds; keeping the previous ones")
            return
        if known is not None:
            with self._lock:
                self.new_kind.set_known(known)

    def _request_refit(self) -> None:
        """Refit on the refit thread, unless a refit is already waiting there (it reads the store
        when it starts, so it sees what this one would)."""
        if self._refits is None:
            return
        waiting = self._refit is not None and not self._refit.running() and not self._refit.done()
        if not waiting:
            self._refit = self._refits.submit(self.refit_known_kinds)

    def observe(self, obs: Observation) -> list[Alert]:
        """Feed the rules one frame (and every ``new_kind_refit_every`` frames ask for a refit of the
        known kinds); the alerts it raised."""
        if self._observed % self._refit_every == 0:
            self._request_refit()
        with self._lock:
            alerts = self.engine.observe(obs)
        self._observed += 1
        if self._observed % SAVE_STATE_EVERY == 0:
            self.save_state()
        return alerts

    def save_state(self) -> None:
        try:
            with self._lock:
                state = json_safe(self.engine.state_dict())
            atomic_write_text(self.root / ALERT_STATE, json.dumps(state))
        except Exception:
            log.exception("could not save the alert rules' state")

    def close(self) -> None:
        if self._refits is not None:
            self._refits.shutdown(wait=True, cancel_futures=True)
        self.engine.close()

    def publish_verdict(self, result: dict[str, Any]) -> None:
        """Send the verdict's headline fields to MQTT (when configured)."""
        if self.mqtt is None:
            return
        try:
            self.mqtt.publish_verdict({k: result[k] for k in VERDICT_KEYS})
        except Exception:
            log.exception("publishing the verdict to MQTT failed")
