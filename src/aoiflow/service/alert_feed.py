"""The alert rules as the line feeds them: one ``Observation`` per frame, alerts to their sinks
(the line's store, alerts.jsonl, MQTT, a webhook), the rules' state kept across restarts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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
    MqttSink,
    NormalDrift,
    Observation,
    WebhookSink,
    json_safe,
)
from .settings import ServiceSettings

log = logging.getLogger(__name__)

ALERT_STATE = "alert_state.json"
SAVE_STATE_EVERY = 100  # observations between saves of the alert rules' state
VERDICT_KEYS = ("id", "created_at", "source", "file_name", "decision", "verdict", "kind", "confidence", "a",
                "threshold", "model_version", "stored")  # what MQTT gets of each verdict


class AlertFeed:
    """The alert engine with its rules and sinks, its state under ``root``. ``on_alert`` keeps
    each alert (the line's store); ``already_raised(key)`` asks the store about one."""

    def __init__(self, settings: ServiceSettings, root: Path, on_alert: Callable[[Alert], None],
                 already_raised: Callable[[str], bool]) -> None:
        self.root = root
        self.mqtt: MqttSink | None = None
        self.engine = self._engine(settings, on_alert, already_raised)
        self._observed = 0

    def _engine(self, s: ServiceSettings, on_alert: Callable[[Alert], None],
                already_raised: Callable[[str], bool]) -> AlertEngine:
        rules = [DefectRateChart(n=s.rate_window, baseline_n=s.rate_baseline_n), NormalDrift(),
                 InputHealth(window=s.input_health_window, limit=s.input_health_limit)]
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

    def observe(self, obs: Observation) -> list[Alert]:
        """Feed the rules one frame; the alerts it raised."""
        alerts = self.engine.observe(obs)
        self._observed += 1
        if self._observed % SAVE_STATE_EVERY == 0:
            self.save_state()
        return alerts

    def save_state(self) -> None:
        try:
            atomic_write_text(self.root / ALERT_STATE, json.dumps(json_safe(self.engine.state_dict())))
        except Exception:
            log.exception("could not save the alert rules' state")

    def close(self) -> None:
        self.engine.close()

    def publish_verdict(self, result: dict[str, Any]) -> None:
        """Send the verdict's headline fields to MQTT (when configured)."""
        if self.mqtt is None:
            return
        try:
            self.mqtt.publish_verdict({k: result[k] for k in VERDICT_KEYS})
        except Exception:
            log.exception("publishing the verdict to MQTT failed")
