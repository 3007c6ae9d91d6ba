"""The line's HTTP API: ``create_app(settings) -> FastAPI``.

    uvicorn.run(create_app(ServiceSettings(run="runs/tile", data_dir="line")), port=8000)

Endpoints (the versioned API under /api/v1; OpenAPI docs at /docs):

    POST /api/v1/inspect                      multipart ``file`` (+ ``source``) -> the verdict
    GET  /api/v1/inspections                  filters, limit/offset -> {items, total}
    GET  /api/v1/inspections/{id}             one inspection
    GET  /api/v1/inspections/{id}/image       the inspected image
    GET  /api/v1/inspections/{id}/overlay     image and anomaly heat side by side (PNG)
    POST /api/v1/inspections/{id}/review      {status, label, by}
    GET  /api/v1/stats                        per minute/hour/day: total, ok, anomaly, defects, yield
    GET  /api/v1/export.csv                   the selected inspections as CSV, streamed
    GET  /api/v1/alerts                       newest first
    POST /api/v1/alerts/{id}/ack              {by}
    GET  /api/v1/models                       registered versions and the active one
    POST /api/v1/models/activate              {run, supervised}: swap the model between inspections
    GET  /api/v1/events                       server-sent events: inspection, alert, input_error
    GET  /api/v1/events/state                 the last event's id (a page resumes its stream after it)
    GET  /healthz  /readyz  /metrics

The operator pages (/, /inspections, /review, /labels, /alerts, /models) and the API they use
beyond this one (review actions and labels, label export, training jobs, Label Studio) are
``aoiflow.service.ui``, mounted here.

Everything stateful lives on ``app.state.line`` (``pipeline.Line``), made by the lifespan: no
module globals, so two apps (two lines, or tests) live side by side in one process. Writes need
``Authorization: Bearer <token>`` when a token is set, reads too with ``read_token`` (for reads
the token may also come as the ``aoiflow_token`` cookie, which the pages set: a browser's page
loads, images and event stream cannot send headers; writes always need the header).
"""


import asyncio
import hmac
import io
import json
import logging
import mimetypes
import queue
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .files import safe_name
from .metrics import Metrics
from .pipeline import InspectionFailed, Line, Loader, verdict_json
from .settings import ServiceSettings
from .store import InspectionFilter, StoreUnavailable
from .store.records import REVIEW_STATUSES
from .upload import FILE_FIELD, UploadRejected, receive_upload
from .worker import QueueFull, WorkerClosed

log = logging.getLogger(__name__)

API = "/api/v1"
MAX_SOURCE = 200
STORE_RETRY_AFTER_S = 5
TOKEN_COOKIE = "aoiflow_token"  # the read token as the pages send it (see the module docstring)
# An event stream ends after this long and the browser reconnects at once, resuming after the last
# event it saw: a server shutting down waits for open responses, and would wait forever on a page.
EVENTS_STREAM_S = 15.0
EVENTS_PING_S = 5.0     # a comment line this often keeps proxies from closing an idle stream
EVENTS_RETRY_MS = 500   # how soon the browser reconnects


# -- request and response bodies -------------------------------------------------------------

class ReviewIn(BaseModel):
    status: Literal[REVIEW_STATUSES]  # type: ignore[valid-type]
    label: str | None = Field(None, max_length=200)
    by: str | None = Field(None, max_length=200)


class AckIn(BaseModel):
    by: str = Field("operator", max_length=200)


class ActivateIn(BaseModel):
    run: str = Field(description="run folder or exported model, as a path on the service's machine")
    supervised: str | None = None


class VerdictOut(BaseModel):
    """One inspection as the API gives it (``stored`` False: the database was away, the record
    waits in the spool and has no id yet)."""

    id: int | None
    stored: bool
    created_at: datetime
    source: str
    file_name: str
    a: float
    r: float
    l: float
    threshold: float
    decision: Literal["normal", "anomalous"]
    verdict: str = Field(description="ok, anomaly, defect:<kind> or unknown_anomaly")
    kind: str | None
    confidence: float | None
    regions: list[dict[str, Any]]
    model_version: str
    supervised_version: str | None
    timings_ms: dict[str, float]
    descriptor: list[float] | None = Field(description="[A, R, L, area share over the pixel threshold, "
                                                       "regions, map max / map scale]")
    image_url: str | None
    overlay_url: str | None
    review_status: str | None = None
    review_label: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    reviewed_regions: list[dict[str, Any]] | None = Field(None, description="the regions a review left "
                                                                            "([] for a part reviewed normal)")


_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FILE_FIELD],
    "properties": {FILE_FIELD: {"type": "string", "format": "binary", "description": "the image"},
                   "source": {"type": "string", "description": "camera or station name (default 'upload')"}}}}}}}


# -- helpers ---------------------------------------------------------------------------------

def _line(request: Request) -> Line:
    return request.app.state.line


def _utc(value: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC (the store keeps UTC only)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def inspection_filter(
    since: Annotated[datetime | None, Query(description="inclusive; ISO 8601, UTC when no zone is given")] = None,
    until: Annotated[datetime | None, Query(description="exclusive")] = None,
    verdict: Annotated[list[str] | None, Query(description="repeatable: ok, anomaly, defect:<kind>, ...")] = None,
    kind: Annotated[list[str] | None, Query(description="repeatable defect kind")] = None,
    decision: Literal["normal", "anomalous"] | None = None,
    min_a: float | None = None,
    max_a: float | None = None,
    model_version: str | None = None,
    source: str | None = None,
    review_status: Literal[REVIEW_STATUSES] | None = None,  # type: ignore[valid-type]
    unreviewed: bool = False,
) -> InspectionFilter:
    return InspectionFilter(since=_utc(since), until=_utc(until), verdicts=verdict, kinds=kind, decision=decision,
                            min_a=min_a, max_a=max_a, model_version=model_version, source=source,
                            review_status=review_status, unreviewed_only=unreviewed)


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


def _stream_csv(line: Line, where: InspectionFilter) -> Iterator[bytes]:
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


# -- the app ---------------------------------------------------------------------------------

def create_app(settings: ServiceSettings, *, inspector: Any = None, loader: Loader | None = None) -> FastAPI:
    """The service for ``settings``. ``inspector``: an already loaded ``Inspector`` (else the
    lifespan loads ``settings.run``); ``loader(run, supervised) -> Inspector`` loads models for
    activation (default: ``Inspector.load`` with the settings' threshold and threads)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        line = Line(settings, metrics, inspector=inspector, loader=loader)
        app.state.line = line
        try:
            await asyncio.to_thread(line.start)
        except BaseException:
            await asyncio.to_thread(line.close)  # whatever had started stops again
            raise
        try:
            yield
        finally:
            await asyncio.to_thread(line.close)

    app = FastAPI(title="aoiflow line service", version="1",
                  description="Inspect parts with a trained aoiflow model, keep every verdict, raise alerts.",
                  lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    bearer = HTTPBearer(auto_error=False, description="the token given to `aoiflow serve --token`")
    token = settings.token.get_secret_value().encode() if settings.token else None

    def _check(credentials: HTTPAuthorizationCredentials | None) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if token is not None and not (credentials and hmac.compare_digest(given, token)):
            metrics.error("unauthorized")
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def write_access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        _check(credentials)

    def read_access(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.read_token:
            cookie = request.cookies.get(TOKEN_COOKIE)
            if credentials is None and cookie:
                credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=cookie)
            _check(credentials)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        metrics.error("store_unavailable")
        return _problem(503, f"{exc}; the service keeps inspecting and stores the records when it is back",
                        retry_after=STORE_RETRY_AFTER_S)

    # -- probes --------------------------------------------------------------------------

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz(request: Request) -> JSONResponse:
        """A model is loaded and the database answers (503 otherwise)."""
        line = _line(request)
        ok, why = line.ready()
        body = {"status": "ready" if ok else "not ready", "detail": why, "model_version": line.version,
                "spooled": len(line.spool), "queue": line.worker.depth if line.worker else 0}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], dependencies=[Depends(read_access)])
    def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=metrics.content_type)

    api = APIRouter(prefix=API)

    # -- inspect -------------------------------------------------------------------------

    @api.post("/inspect", tags=["inspect"], dependencies=[Depends(write_access)], openapi_extra=_UPLOAD_DOC,
              responses={200: {"model": VerdictOut}, 413: {"description": "upload over --max-upload-mb"},
                         422: {"description": "not an image, a decompression bomb, unreadable"},
                         503: {"description": "queue full (Retry-After) or shutting down"}})
    async def inspect(request: Request) -> JSONResponse:
        """Judge one image: multipart form with the image in ``file`` and optionally ``source``."""
        line = _line(request)
        target = line.files.temp_path()
        try:
            upload = await receive_upload(request, target, settings.max_upload_bytes)
        except UploadRejected as exc:
            metrics.error("too_large" if exc.status == 413 else "bad_request")
            return _problem(exc.status, exc.message)
        source = (upload.fields.get("source") or "upload").strip()[:MAX_SOURCE] or "upload"
        file_name = safe_name(upload.file_name)

        def job(waited: float) -> dict[str, Any]:
            return line.inspect(target, source=source, file_name=file_name, waited_s=waited,
                                upload_s=upload.seconds, move=True)

        try:
            future = line.worker.submit(job)
        except (QueueFull, WorkerClosed) as exc:
            target.unlink(missing_ok=True)
            metrics.error("queue_full")
            return _problem(503, str(exc), retry_after=getattr(exc, "retry_after", STORE_RETRY_AFTER_S))
        try:
            # shielded: a client that goes away does not cancel a part already in the queue
            result = await asyncio.shield(asyncio.wrap_future(future))
        except InspectionFailed as exc:
            return _problem(422, f"{file_name}: {exc.reason}", kind=exc.kind)
        except WorkerClosed as exc:
            return _problem(503, str(exc), retry_after=STORE_RETRY_AFTER_S)
        except Exception:
            metrics.error("internal")
            log.exception("inspecting %s failed", file_name)
            return _problem(500, f"{file_name}: inspection failed inside the service; see its log")
        return JSONResponse(result)

    # -- inspections ---------------------------------------------------------------------

    @api.get("/inspections", tags=["inspections"], dependencies=[Depends(read_access)])
    def list_inspections(request: Request, where: Annotated[InspectionFilter, Depends(inspection_filter)],
                         limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                         offset: Annotated[int, Query(ge=0)] = 0, oldest_first: bool = False) -> dict[str, Any]:
        """A page of inspections (newest first unless ``oldest_first``) and the total selected."""
        store = _line(request).store.get()
        items = store.query_inspections(where, limit=limit, offset=offset, newest_first=not oldest_first)
        return {"items": [verdict_json(r, r.id) for r in items], "total": store.count_inspections(where),
                "limit": limit, "offset": offset}

    def _get(request: Request, inspection_id: int):
        record = _line(request).store.get().get_inspection(inspection_id)
        if record is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return record

    @api.get("/inspections/{inspection_id}", tags=["inspections"], dependencies=[Depends(read_access)],
             responses={200: {"model": VerdictOut}})
    def get_inspection(request: Request, inspection_id: int) -> dict[str, Any]:
        return verdict_json(_get(request, inspection_id), inspection_id)

    def _file(request: Request, inspection_id: int, what: str) -> FileResponse:
        record = _get(request, inspection_id)
        path = _line(request).files.resolve(record.image_path if what == "image" else record.overlay_path)
        if path is None:
            raise HTTPException(404, f"inspection {inspection_id} has no {what} file")
        # Only image types: an upload that decodes as an image yet is named .html is not served as a page.
        media = mimetypes.guess_type(path.name)[0] or ""
        return FileResponse(path, media_type=media if media.startswith("image/") else "application/octet-stream",
                            filename=path.name, content_disposition_type="inline",
                            headers={"X-Content-Type-Options": "nosniff"})

    @api.get("/inspections/{inspection_id}/image", tags=["inspections"], dependencies=[Depends(read_access)])
    def get_image(request: Request, inspection_id: int) -> FileResponse:
        return _file(request, inspection_id, "image")

    @api.get("/inspections/{inspection_id}/overlay", tags=["inspections"], dependencies=[Depends(read_access)])
    def get_overlay(request: Request, inspection_id: int) -> FileResponse:
        return _file(request, inspection_id, "overlay")

    @api.post("/inspections/{inspection_id}/review", tags=["inspections"], dependencies=[Depends(write_access)])
    def review(request: Request, inspection_id: int, body: ReviewIn) -> dict[str, Any]:
        """An operator's review: confirmed, corrected (with the right ``label``) or rejected."""
        store = _line(request).store.get()
        if not store.review_inspection(inspection_id, body.status, body.label, body.by):
            raise HTTPException(404, f"no inspection {inspection_id}")
        return verdict_json(store.get_inspection(inspection_id), inspection_id)

    @api.get("/stats", tags=["inspections"], dependencies=[Depends(read_access)])
    def stats(request: Request, since: datetime | None = None, until: datetime | None = None,
              bucket: Literal["minute", "hour", "day"] = "hour") -> dict[str, Any]:
        """Per UTC bucket in [since, until): total, ok, anomaly, defects per kind, yield."""
        rows = _line(request).store.get().stats(_utc(since), _utc(until), bucket)
        return {"bucket": bucket, "buckets": [{**r, "bucket": r["bucket"].isoformat()} for r in rows]}

    @api.get("/export.csv", tags=["inspections"], dependencies=[Depends(read_access)],
             response_class=StreamingResponse)
    def export_csv(request: Request, where: Annotated[InspectionFilter, Depends(inspection_filter)]):
        """The selected inspections, oldest first, as CSV (streamed)."""
        line = _line(request)
        line.store.get().ping()  # a 503 now, rather than a cut-off download
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(_stream_csv(line, where), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="inspections-{stamp}.csv"'})

    # -- alerts --------------------------------------------------------------------------

    @api.get("/alerts", tags=["alerts"], dependencies=[Depends(read_access)])
    def alerts(request: Request, unacknowledged: bool = False,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        from dataclasses import asdict

        from .alerts import json_safe

        rows = _line(request).store.get().list_alerts(unacknowledged_only=unacknowledged, limit=limit)
        return {"items": [json_safe(asdict(a)) for a in rows]}

    @api.post("/alerts/{alert_id}/ack", tags=["alerts"], dependencies=[Depends(write_access)])
    def acknowledge(request: Request, alert_id: int, body: Annotated[AckIn | None, Body()] = None) -> dict[str, Any]:
        by = (body or AckIn()).by
        if not _line(request).store.get().acknowledge_alert(alert_id, by):
            raise HTTPException(404, f"no unacknowledged alert {alert_id}")
        return {"id": alert_id, "acknowledged": True, "by": by}

    # -- models --------------------------------------------------------------------------

    @api.get("/models", tags=["models"], dependencies=[Depends(read_access)])
    def models(request: Request) -> dict[str, Any]:
        from dataclasses import asdict

        from .alerts import json_safe

        line = _line(request)
        registered = line.store.get().list_models()
        return {"active": line.version, "supervised": str(line.supervised_path) if line.supervised_path else None,
                "models": [json_safe(asdict(m)) for m in registered]}

    @api.post("/models/activate", tags=["models"], dependencies=[Depends(write_access)])
    async def activate(request: Request, body: ActivateIn) -> JSONResponse:
        """Load another model and swap it in between two inspections (none is dropped)."""
        from aoiflow.runs import RunError

        line = _line(request)
        supervised = Path(body.supervised) if body.supervised else None
        try:
            previous, active = await asyncio.to_thread(line.activate, Path(body.run), supervised)
        except (RunError, ValueError, OSError) as exc:
            return _problem(422, f"cannot load {body.run}: {exc}")
        return JSONResponse({"active": active, "previous": previous})

    # -- live events -----------------------------------------------------------------------

    @api.get("/events/state", tags=["live"], dependencies=[Depends(read_access)])
    def events_state(request: Request) -> dict[str, int]:
        """The id of the last event published (a page rendered now streams from after it)."""
        hub = _line(request).events
        return {"last_id": hub.last_id, "subscribers": hub.subscribers}

    @api.get("/events", tags=["live"], dependencies=[Depends(read_access)], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(request: Request, after: Annotated[int | None, Query(ge=0)] = None,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        """Server-sent events as the line works: ``inspection`` (the verdict as POST /inspect
        answers it), ``alert`` and ``input_error``, each with an ``id`` to resume from (the
        browser's Last-Event-ID, else ``after``). A stream ends after a few seconds and the
        browser reconnects at once, missing nothing that happened meanwhile."""
        hub = _line(request).events
        resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
        loop = asyncio.get_running_loop()

        async def stream():
            sub = hub.subscribe(resume)
            try:
                yield f"retry: {EVENTS_RETRY_MS}\n\n".encode()
                deadline = loop.time() + EVENTS_STREAM_S
                while (left := deadline - loop.time()) > 0:
                    try:
                        seq, kind, data = await asyncio.wait_for(sub.queue.get(), min(left, EVENTS_PING_S))
                    except TimeoutError:
                        yield b": ping\n\n"
                        continue
                    yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(api)

    from .ui import mount_ui  # the operator pages, their API, their static files

    mount_ui(app, read_access, write_access)
    return app
