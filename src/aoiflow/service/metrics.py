"""Prometheus metrics of one service instance (its own registry: two apps in one process, as in
the tests, never share or clash)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: a tiny CPU model answers in milliseconds, a big one on a slow PC in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ERROR_KINDS = ("unreadable", "skipped", "too_large", "bad_request", "queue_full", "store_unavailable",
               "unauthorized", "internal")


class Metrics:
    """``aoiflow_inspection_seconds`` (histogram, by stage: total / queue / inference / store),
    ``aoiflow_inspections_total`` (by verdict and source), ``aoiflow_queue_depth``,
    ``aoiflow_errors_total`` (by kind), ``aoiflow_spooled_records`` and ``aoiflow_model_info``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("aoiflow_inspection_seconds", "Time per inspection by stage", ["stage"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inspections = Counter("aoiflow_inspections", "Inspections judged", ["verdict", "source"], registry=r)
        self.queue_depth = Gauge("aoiflow_queue_depth", "Inspections waiting for the model", registry=r)
        self.errors = Counter("aoiflow_errors", "Requests or frames that gave no verdict, by kind", ["kind"],
                              registry=r)
        self.spooled = Gauge("aoiflow_spooled_records", "Records waiting for the database", registry=r)
        self.alerts = Counter("aoiflow_alerts", "Alerts raised", ["rule"], registry=r)
        self.model = Gauge("aoiflow_model_info", "The active model (value 1)", ["version"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # every kind shows, at 0, from the start

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def set_model(self, version: str) -> None:
        self.model.clear()
        self.model.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
