"""The line: one frame in, one verdict out, kept and watched.

``Line.inspect`` is what every inspection goes through, an upload or a watched file alike, on the
inference thread (``worker.py``): the ``Inspector`` (the same one ``aoiflow predict`` uses, so one
inference path and one decision rule), the image and its overlay kept under the data folder, the
record stored (or spooled while the database is away), the alert rules fed, the verdict published.

The descriptor stored with every inspection and given to the alert rules (``Observation``) is,
until the supervised model supplies a learned one, six numbers pooled from the anomaly map:

    [A, R, L, share of map pixels over the pixel threshold, number of regions, map max / map scale]

(the pixel threshold is the run's calibrated one, or half the map scale for runs without it;
regions are connected areas over it of at least 4 model-input pixels, as ``aoiflow prelabel``
finds them). Anomalous parts whose Inspector gives no regions get these map regions in the
verdict's ``regions`` (kind ``"anomaly"``, largest first, at most ``MAX_REGIONS``, each with its
outline as ``"polygon"``), or, when no map pixel is over the pixel threshold, relaxed pre-labels
(``prelabel_regions``: the map's top 1 %, ``"relaxed": true``), so the review queue always has an
outline to confirm or correct.

Every verdict, alert and unreadable frame is also published on ``Line.events`` (``EventHub``),
which the API streams to the operator pages as server-sent events.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aoiflow import data
from aoiflow.fileio import atomic_write_text
from aoiflow.predict import Inspector, Prediction, overlay_png

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
from .files import DataDir, safe_name
from .metrics import Metrics
from .settings import ServiceSettings
from .spool import (
    RetrySpool,
    StoreHandle,
    alert_from_json,
    inspection_from_json,
    record_to_json,
)
from .store import AlertRecord, InspectionRecord, StoreUnavailable
from .store.records import utcnow
from .worker import InferenceWorker

log = logging.getLogger(__name__)

MAX_REGIONS = 20
MAX_PRELABELS = 5       # relaxed pre-labels kept per part
RELAXED_TOP = 0.01      # share of the map's pixels relaxed pre-labels start from
ALERT_STATE = "alert_state.json"
SAVE_STATE_EVERY = 100  # observations between saves of the alert rules' state
DESCRIPTOR_FIELDS = ("a", "r", "l", "area_share", "regions", "map_max")

Loader = Callable[[Path, "Path | None"], Inspector]


class InspectionFailed(Exception):
    """The frame gave no verdict: ``kind`` is 'unreadable' or 'skipped', ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class FileKey:
    """One version of a watched file, as the store's processed-files table keys it."""

    path: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def default_loader(settings: ServiceSettings) -> Loader:
    """``Inspector.load`` with the service's threshold and threads, and the supervised
    (defect-kind) model for the two-stage verdict when one is given."""
    def load(run: Path, supervised: Path | None = None) -> Inspector:
        return Inspector.load(run, settings.threshold, threads=settings.threads, supervised=supervised)
    return load


def describe_map(pred: Prediction, inspector: Inspector) -> tuple[list[float], list[dict[str, Any]]]:
    """The descriptor (see the module docstring) and the map's regions, largest first."""
    from aoiflow.regions import RegionSettings, find_regions

    amap = pred.anomaly_map
    pixel_threshold = inspector.calibration.pixel_threshold or inspector.map_scale / 2
    size = inspector.config.model.image_size
    regions = find_regions(amap, RegionSettings(threshold=float(pixel_threshold), min_area=4.0),
                           pixels_per_model_pixel=amap.size / size**2)
    descriptor = [pred.a, pred.r, pred.l, float((amap > pixel_threshold).mean()), float(len(regions)),
                  float(amap.max()) / inspector.map_scale]
    return [float(v) if math.isfinite(v) else 0.0 for v in descriptor], region_dicts(regions[:MAX_REGIONS])


def region_dicts(regions: list[Any], relaxed: bool = False) -> list[dict[str, Any]]:
    """``regions.Region`` objects as the verdict's region records: kind "anomaly", box, area, max
    score and the outline ``polygon`` ([[x, y], ...], pixel centres at integers, as ``Region``)."""
    out = []
    for r in regions:
        d = {"kind": "anomaly", "confidence": None, "box": [int(v) for v in r.box], "area": int(r.area),
             "max_score": float(r.max_score), "polygon": [[round(float(x), 2), round(float(y), 2)] for x, y in r.polygon]}
        if relaxed:
            d["relaxed"] = True
        out.append(d)
    return out


def prelabel_regions(pred: Prediction, inspector: Inspector) -> list[dict[str, Any]]:
    """Pre-labels for a flagged part whose map has no region over the pixel threshold: the top
    ``RELAXED_TOP`` of the map's pixels, closed over one model pixel so a defect's fragments join,
    in regions of at least 4 model-input pixels, largest first, at most ``MAX_PRELABELS``.

    Weaker evidence than regions over the calibrated threshold (marked ``"relaxed": true``): an
    outline to confirm or delete rather than nothing. Whether it saves a reviewer work depends on
    the run (benchmarks/labelling_speed.py measures it: with a tiny run and runs/tile128 on the
    tile set it did not, as these outlines seldom overlapped the defect)."""
    import numpy as np

    from aoiflow.regions import RegionSettings, find_regions

    amap = np.nan_to_num(np.asarray(pred.anomaly_map, dtype=np.float64), nan=-np.inf)
    if amap.size == 0 or not np.isfinite(amap).any():
        return []
    size = inspector.config.model.image_size
    per_model_pixel = amap.size / size**2
    threshold = float(np.quantile(amap[np.isfinite(amap)], 1.0 - RELAXED_TOP))
    settings = RegionSettings(threshold=threshold, min_area=4.0, closing=max(1, round(math.sqrt(per_model_pixel))))
    regions = find_regions(amap, settings, pixels_per_model_pixel=per_model_pixel)
    return region_dicts(regions[:MAX_PRELABELS], relaxed=True)


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


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Line:
    """The service's moving parts: store, spool, inspector, inference thread, alerts, watcher."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics, inspector: Inspector | None = None,
                 loader: Loader | None = None) -> None:
        self.settings, self.metrics = settings, metrics
        self.loader = loader or default_loader(settings)
        self.inspector = inspector
        self.supervised_path = settings.supervised
        self.files = DataDir(settings.data_dir)
        self.store = StoreHandle(settings.db_url)
        self.spool = RetrySpool(self.files.root / "spool.jsonl")
        self.engine: AlertEngine | None = None
        self.mqtt: MqttSink | None = None
        self.worker: InferenceWorker | None = None
        self.watcher: Any = None
        self.events = EventHub()
        self._models: dict[str, dict[str, Any]] = {}  # version -> registration not yet in the store
        self._observed = 0
        self._down_until = 0.0  # until then the database counts as away: records go straight to the spool
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (unless given), open the store (or keep trying), start the inference
        thread, the retry loop and the watcher."""
        s = self.settings
        if s.max_pixels is not None:
            data.set_max_pixels(s.max_pixels)
        self.files.clear_temp()
        if self.inspector is None:
            self.inspector = self.loader(s.run, s.supervised)
        self._note_model(self.inspector, s.run)
        try:
            self.store.get()
        except StoreUnavailable as exc:
            log.warning("%s; inspecting anyway, records wait in %s", exc, self.spool.path)
        self.engine = self._alert_engine()
        self.worker = InferenceWorker(s.queue, on_depth=self.metrics.queue_depth.set)
        self.retry()
        self._retry_thread = threading.Thread(target=self._retry_loop, name="aoiflow-retry", daemon=True)
        self._retry_thread.start()
        if s.watch is not None:
            from .watch import FolderWatcher

            self.watcher = FolderWatcher(self, s.watch, settle_s=s.settle_s, rescan_s=s.rescan_s)
            self.watcher.start()

    def close(self) -> None:
        """Stop taking work, finish what is queued, write what can be written, close everything."""
        steps = [self.watcher.stop if self.watcher is not None else None,
                 self.worker.close if self.worker is not None else None,
                 self._stop.set,
                 (lambda: self._retry_thread.join(30)) if self._retry_thread is not None else None,
                 self.retry,
                 self._save_alert_state if self.engine is not None else None,
                 self.engine.close if self.engine is not None else None,
                 self.store.close]
        for step in filter(None, steps):
            try:
                step()
            except Exception:  # noqa: BLE001  one part failing to stop must not keep the others running
                log.exception("shutting down the line: %s failed", getattr(step, "__qualname__", step))

    def _alert_engine(self) -> AlertEngine:
        s = self.settings
        rules = [DefectRateChart(n=s.rate_window, baseline_n=s.rate_baseline_n), NormalDrift(),
                 InputHealth(window=s.input_health_window, limit=s.input_health_limit)]
        sinks: list[Any] = [CallbackSink(self._store_alert), JsonLinesSink(self.files.root / "alerts.jsonl")]
        if s.mqtt_address is not None:
            self.mqtt = MqttSink(*s.mqtt_address, topic_prefix=s.mqtt_prefix)
            sinks.append(self.mqtt)
        if s.webhook:
            sinks.append(WebhookSink(s.webhook))
        engine = AlertEngine(rules, sinks, already_raised=self._already_raised)
        state = self.files.root / ALERT_STATE
        if state.is_file():
            try:
                engine.load_state_dict(json.loads(state.read_text()))
            except Exception:  # other rule settings, an older file: start the rules afresh
                log.exception("could not restore the alert rules' state from %s; starting afresh", state)
        return engine

    def _save_alert_state(self) -> None:
        try:
            atomic_write_text(self.files.root / ALERT_STATE, json.dumps(json_safe(self.engine.state_dict())))
        except Exception:
            log.exception("could not save the alert rules' state")

    # -- readiness, models -------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.inspector is None:
            return False, "no model loaded"
        try:
            self.store.get().ping()
        except StoreUnavailable as exc:
            return False, str(exc)
        return True, "ready"

    @property
    def version(self) -> str:
        return self.inspector.version if self.inspector is not None else ""

    def _note_model(self, inspector: Inspector, path: Path) -> None:
        """Register the model version in the store now, or as soon as the store is back."""
        self.metrics.set_model(inspector.version)
        details = {"threshold": float(inspector.threshold), "map_scale": float(inspector.map_scale),
                   "image_size": inspector.config.model.image_size, "channels": inspector.channels}
        self._models[inspector.version] = {"kind": "ganomaly", "path": str(path), "details": details}
        sup_version = getattr(inspector, "supervised_version", None)
        if sup_version:
            self._models[sup_version] = {"kind": "supervised", "path": str(self.supervised_path or ""),
                                         "details": {}}
        self._register_models()

    def _register_models(self) -> None:
        for version, m in list(self._models.items()):
            try:
                self.store.get().register_model(version, m["kind"], m["path"], m["details"])
            except StoreUnavailable:
                return
            self._models.pop(version, None)

    def activate(self, run: Path, supervised: Path | None = None) -> tuple[str, str]:
        """Load another model (on the calling thread) and swap it in on the inference thread
        between two inspections: none is dropped, each records the version that judged it.
        Returns (previous version, new version)."""
        new = self.loader(run, supervised)

        def swap(_waited: float) -> str:
            previous, self.inspector = self.inspector.version, new
            self.supervised_path = supervised
            return previous

        previous = self.worker.call(swap).result()
        self._note_model(new, run)
        log.info("model %s replaced %s", new.version, previous)
        return previous, new.version

    # -- the spool ---------------------------------------------------------------------------

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

    def _database_away(self) -> bool:
        """True for ``spool_retry_s`` after a write failed: the inference thread then does not wait
        on a database that is down (a PostgreSQL host that does not answer costs seconds per
        try); the retry loop finds out when it is back."""
        return time.monotonic() < self._down_until

    def _went_away(self, exc: StoreUnavailable) -> None:
        if not self._database_away():
            log.warning("%s; records wait in %s until it is back", exc, self.spool.path)
        self._down_until = time.monotonic() + self.settings.spool_retry_s

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.settings.spool_retry_s):
            if len(self.spool) or self._models or not self.store.opened:
                try:
                    self.retry()
                except Exception:
                    log.exception("retrying the spool failed")

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

    def _spool(self, entry: dict[str, Any]) -> None:
        self.spool.add(entry)
        self.metrics.spooled.set(len(self.spool))

    # -- alerts ------------------------------------------------------------------------------

    def _store_alert(self, alert: Alert) -> None:
        record = AlertRecord(key=alert.key, rule=alert.rule, severity=alert.severity, message=alert.message,
                             kind=alert.kind, evidence=[int(i) for i in alert.evidence],
                             details=json_safe(alert.details), created_at=alert.time)
        self.metrics.alerts.labels(alert.rule).inc()
        event = {k: v for k, v in record_to_json(record).items() if k not in ("details",)}
        if not self._database_away():
            try:
                event["id"] = self.store.get().add_alert(record)
                self.events.publish("alert", event)
                return
            except StoreUnavailable as exc:
                self._went_away(exc)
        self._spool({"type": "alert", "record": record_to_json(record)})
        self.events.publish("alert", event)

    def _already_raised(self, key: str) -> bool:
        if self._database_away():
            return False
        try:
            return self.store.get().has_alert(key)
        except StoreUnavailable as exc:
            self._went_away(exc)
            return False

    def _observe(self, obs: Observation) -> list[Alert]:
        alerts = self.engine.observe(obs)
        self._observed += 1
        if self._observed % SAVE_STATE_EVERY == 0:
            self._save_alert_state()
        return alerts

    # -- one inspection (on the inference thread) --------------------------------------------

    def inspect(self, path: Path, *, source: str, file_name: str, waited_s: float, upload_s: float = 0.0,
                move: bool = True, claimed: FileKey | None = None) -> dict[str, Any]:
        """Judge one image file and keep the result; the verdict as a JSON-safe dict.

        ``move``: the file is an upload in tmp/ (moved into images/, or deleted when unreadable);
        otherwise a watched file, copied. ``claimed``: the watched file's key, finished with the
        inspection in the same transaction. Raises ``InspectionFailed`` for a frame with no verdict."""
        started = time.perf_counter()
        inspector = self.inspector  # one model judges the whole inspection, whatever swaps later
        try:
            pred = next(iter(inspector.predict_files([path], raw=self.settings.raw)))
        except BaseException:
            if move:
                path.unlink(missing_ok=True)
            raise
        inferred = time.perf_counter()
        now = utcnow()
        if pred.status != "ok":
            self._failed(pred, path, now, move, claimed)
        upload_id = self.files.new_id()
        image = self.files.keep(path, upload_id, file_name, now, move)
        overlay = None
        anomalous = pred.decision == "anomalous"
        if self.settings.overlays == "all" or (anomalous and self.settings.overlays == "anomalous"):
            overlay = self.files.overlay_path(upload_id, now)
            overlay_png(pred.original, pred.anomaly_map, inspector.map_scale, overlay)
        descriptor, map_regions = describe_map(pred, inspector)
        regions = pred.regions or (map_regions if anomalous else [])
        if anomalous and not regions:
            regions = prelabel_regions(pred, inspector)
        kept = time.perf_counter()
        timings = {"upload": _ms(upload_s), "queue": _ms(waited_s), "inference": _ms(inferred - started),
                   "files": _ms(kept - inferred)}
        record = InspectionRecord(
            source=source, file_name=file_name, a=pred.a, r=pred.r, l=pred.l, threshold=float(inspector.threshold),
            decision=pred.decision, verdict=pred.verdict, kind=pred.kind, confidence=pred.confidence,
            regions=json_safe(regions), model_version=inspector.version,
            supervised_version=getattr(inspector, "supervised_version", None),
            image_path=self.files.relative(image), overlay_path=self.files.relative(overlay) if overlay else None,
            timings_ms=timings, descriptor=descriptor, created_at=now)
        inspection_id = self._keep(record, claimed)
        stored = time.perf_counter()
        alerts = self._observe(Observation(inspection_id=inspection_id, time=now, a=pred.a, decision=pred.decision,
                                           verdict=pred.verdict, kind=pred.kind, descriptor=descriptor))
        result = verdict_json(record, inspection_id)
        result["timings_ms"] = {**timings, "store": _ms(stored - kept), "total": _ms(upload_s + waited_s + stored - started)}
        result["alerts"] = [a.key for a in alerts]
        self._publish(result)
        self.events.publish("inspection", result)
        m = self.metrics
        m.inspections.labels(record.verdict, source).inc()
        m.latency.labels("inference").observe(inferred - started)
        m.latency.labels("queue").observe(waited_s)
        m.latency.labels("store").observe(stored - kept)
        m.latency.labels("total").observe(upload_s + waited_s + stored - started)
        return result

    def _keep(self, record: InspectionRecord, claimed: FileKey | None) -> int | None:
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

    def _failed(self, pred: Prediction, path: Path, now: Any, move: bool, claimed: FileKey | None) -> None:
        kind = "unreadable" if pred.status == "error" else "skipped"
        self.metrics.error(kind)
        if move:
            path.unlink(missing_ok=True)
        if claimed is not None:
            try:
                if self._database_away():
                    raise StoreUnavailable("the database is away")
                self.store.get().finish_file(claimed.path, claimed.size, claimed.mtime_ns, None, pred.reason)
            except StoreUnavailable:
                self._spool({"type": "file_error", "file": claimed.to_json(), "error": pred.reason})
        self._observe(Observation(inspection_id=None, time=now, a=math.nan, decision="normal", verdict="ok",
                                  input_ok=False, evidence={"reason": pred.reason}))
        self.events.publish("input_error", {"kind": kind, "reason": pred.reason, "created_at": now.isoformat()})
        # The path is the service's temporary file: name the problem, not our file.
        raise InspectionFailed(kind, pred.reason)

    def _publish(self, result: dict[str, Any]) -> None:
        if self.mqtt is None:
            return
        keys = ("id", "created_at", "source", "file_name", "decision", "verdict", "kind", "confidence", "a",
                "threshold", "model_version", "stored")
        try:
            self.mqtt.publish_verdict({k: result[k] for k in keys})
        except Exception:
            log.exception("publishing the verdict to MQTT failed")

    # -- the watcher's way in -----------------------------------------------------------------

    def submit_file(self, path: Path, key: FileKey, stop: threading.Event) -> bool:
        """Queue a claimed watched file (waiting for room); False when stopped first."""
        def job(waited: float) -> dict[str, Any] | None:
            try:
                return self.inspect(path, source="watch", file_name=safe_name(path.name), waited_s=waited,
                                    move=False, claimed=key)
            except InspectionFailed as exc:
                log.warning("watched file %s: %s", path, exc.reason)
            except FileNotFoundError:
                log.warning("watched file %s vanished before it was judged", path)
            return None

        while not stop.is_set():
            try:
                future = self.worker.submit(job, wait=0.5)
            except Exception as exc:
                from .worker import QueueFull

                if isinstance(exc, QueueFull):
                    continue
                raise
            future.add_done_callback(_log_failure)
            return True
        return False


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a watched file could not be judged", exc_info=future.exception())


def verdict_json(record: InspectionRecord, inspection_id: int | None) -> dict[str, Any]:
    """The API's view of an inspection: the record's fields, URLs of its files, whether stored."""
    from dataclasses import asdict

    d = json_safe(asdict(record))
    d["id"] = inspection_id
    d["stored"] = inspection_id is not None
    base = f"/api/v1/inspections/{inspection_id}"
    d["image_url"] = f"{base}/image" if inspection_id is not None and record.image_path else None
    d["overlay_url"] = f"{base}/overlay" if inspection_id is not None and record.overlay_path else None
    return d
