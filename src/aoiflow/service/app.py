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
module globals, so two apps (two lines, or tests) live side by side in one process. The routers
are ``api_*.py``; their token checks ``auth.py``, their bodies ``schemas.py``.
"""


import asyncio
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .api_alerts import alerts_router
from .api_common import STORE_RETRY_AFTER_S, line_of, problem
from .api_events import events_router
from .api_inspect import inspect_router
from .api_inspections import inspections_router
from .api_models import models_router
from .auth import Access, token_checks
from .metrics import Metrics
from .pipeline import Line, Loader
from .settings import ServiceSettings
from .store import StoreUnavailable


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
    access = token_checks(settings, metrics)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        metrics.error("store_unavailable")
        return problem(503, f"{exc}; the service keeps inspecting and stores the records when it is back",
                       retry_after=STORE_RETRY_AFTER_S)

    _add_probes(app, access, metrics)
    for router in (inspect_router, inspections_router, alerts_router, models_router, events_router):
        app.include_router(router(access))

    from .ui import mount_ui  # the operator pages, their API, their static files

    mount_ui(app, access.read, access.write)
    return app


def _add_probes(app: FastAPI, access: Access, metrics: Metrics) -> None:
    """/healthz, /readyz and /metrics, outside the versioned API."""

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz(request: Request) -> JSONResponse:
        """A model is loaded and the database answers (503 otherwise)."""
        line = line_of(request)
        ok, why = line.ready()
        body = {"status": "ready" if ok else "not ready", "detail": why, "model_version": line.version,
                "spooled": len(line.spool), "queue": line.worker.depth if line.worker else 0}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], dependencies=[Depends(access.read)])
    def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=metrics.content_type)
