"""The line: one frame in, one verdict out, kept and watched.

``Line.inspect`` is what every inspection goes through, an upload or a watched file alike, on the
inference thread (``worker.py``): the ``Inspector`` (the same one ``aoiflow predict`` uses, so one
inference path and one decision rule), the image and its overlay kept under the data folder, the
descriptor and regions read off the anomaly map (``descriptors.py``), the record stored or spooled
while the database is away (``keeper.py``), the alert rules fed (``alert_feed.py``), the verdict
published.

Every verdict, alert and unreadable frame is also published on ``Line.events`` (``events.EventHub``),
which the API streams to the operator pages as server-sent events.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aoiflow import data
from aoiflow.predict import Inspector, Prediction, overlay_png

from .alert_feed import AlertFeed
from .alerts import Alert, KnownKinds, Observation, json_safe
from .descriptors import describe_map, prelabel_regions
from .events import EventHub
from .files import DataDir, safe_name
from .keeper import FileKey, RecordKeeper
from .known_kinds import known_kinds_from_store
from .metrics import Metrics
from .schemas import verdict_json
from .settings import ServiceSettings
from .spool import RetrySpool, StoreHandle, record_to_json
from .store import AlertRecord, InspectionRecord, StoreUnavailable
from .store.records import utcnow
from .worker import InferenceWorker

log = logging.getLogger(__name__)

Loader = Callable[[Path, "Path | None"], Inspector]


class InspectionFailed(Exception):
    """The frame gave no verdict: ``kind`` is 'unreadable' or 'skipped', ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def default_loader(settings: ServiceSettings) -> Loader:
    """``Inspector.load`` with the service's threshold and threads, and the supervised
    (defect-kind) model for the two-stage verdict when one is given."""
    def load(run: Path, supervised: Path | None = None) -> Inspector:
        return Inspector.load(run, settings.threshold, threads=settings.threads, supervised=supervised)
    return load


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
        self.keeper = RecordKeeper(self.store, self.spool, metrics, settings.spool_retry_s)
        self.alerts: AlertFeed | None = None
        self.worker: InferenceWorker | None = None
        self.watcher: Any = None
        self.events = EventHub()

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
        self.alerts = AlertFeed(s, self.files.root, self._store_alert, self.keeper.already_raised, self._known_kinds)
        self.worker = InferenceWorker(s.queue, on_depth=self.metrics.queue_depth.set)
        self.keeper.start_retrying()
        if s.watch is not None:
            from .watch import FolderWatcher

            self.watcher = FolderWatcher(self, s.watch, settle_s=s.settle_s, rescan_s=s.rescan_s)
            self.watcher.start()

    def close(self) -> None:
        """Stop taking work, finish what is queued, write what can be written, close everything."""
        steps = [self.watcher.stop if self.watcher is not None else None,
                 self.worker.close if self.worker is not None else None,
                 self.keeper.stop_retrying,
                 self.keeper.retry,
                 self.alerts.save_state if self.alerts is not None else None,
                 self.alerts.close if self.alerts is not None else None,
                 self.store.close]
        for step in filter(None, steps):
            try:
                step()
            except Exception:  # noqa: BLE001  one part failing to stop must not keep the others running
                log.exception("shutting down the line: %s failed", getattr(step, "__qualname__", step))

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
        models = {inspector.version: {"kind": "ganomaly", "path": str(path), "details": details}}
        sup_version = getattr(inspector, "supervised_version", None)
        if sup_version:
            models[sup_version] = {"kind": "supervised", "path": str(self.supervised_path or ""), "details": {}}
        self.keeper.register_models(models)

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

    # -- alerts ------------------------------------------------------------------------------

    def _known_kinds(self) -> KnownKinds | None:
        """The new-kind rule's known kinds, fitted from the store as it is now."""
        s = self.settings
        return known_kinds_from_store(self.store.get(), s.new_kind_labelled, s.new_kind_passing,
                                      s.new_kind_min_samples, s.new_kind_min_normals)

    def _store_alert(self, alert: Alert) -> None:
        record = AlertRecord(key=alert.key, rule=alert.rule, severity=alert.severity, message=alert.message,
                             kind=alert.kind, evidence=[int(i) for i in alert.evidence],
                             details=json_safe(alert.details), created_at=alert.time)
        self.metrics.alerts.labels(alert.rule).inc()
        event = {k: v for k, v in record_to_json(record).items() if k not in ("details",)}
        stored, alert_id = self.keeper.keep_alert(record)
        if stored:
            event["id"] = alert_id
        self.events.publish("alert", event)

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
        inspection_id = self.keeper.keep_inspection(record, claimed)
        stored = time.perf_counter()
        alerts = self.alerts.observe(Observation(inspection_id=inspection_id, time=now, a=pred.a,
                                                 decision=pred.decision, verdict=pred.verdict, kind=pred.kind,
                                                 descriptor=descriptor))
        result = verdict_json(record, inspection_id)
        result["timings_ms"] = {**timings, "store": _ms(stored - kept), "total": _ms(upload_s + waited_s + stored - started)}
        result["alerts"] = [a.key for a in alerts]
        self.alerts.publish_verdict(result)
        self.events.publish("inspection", result)
        m = self.metrics
        m.inspections.labels(record.verdict, source).inc()
        m.latency.labels("inference").observe(inferred - started)
        m.latency.labels("queue").observe(waited_s)
        m.latency.labels("store").observe(stored - kept)
        m.latency.labels("total").observe(upload_s + waited_s + stored - started)
        return result

    def _failed(self, pred: Prediction, path: Path, now: Any, move: bool, claimed: FileKey | None) -> None:
        kind = "unreadable" if pred.status == "error" else "skipped"
        self.metrics.error(kind)
        if move:
            path.unlink(missing_ok=True)
        if claimed is not None:
            self.keeper.finish_unreadable_file(claimed, pred.reason)
        self.alerts.observe(Observation(inspection_id=None, time=now, a=math.nan, decision="normal", verdict="ok",
                                        input_ok=False, evidence={"reason": pred.reason}))
        self.events.publish("input_error", {"kind": kind, "reason": pred.reason, "created_at": now.isoformat()})
        # The path is the service's temporary file: name the problem, not our file.
        raise InspectionFailed(kind, pred.reason)

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
