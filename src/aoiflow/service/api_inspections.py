"""The kept inspections under /api/v1: filtered pages, one inspection, its image and overlay,
reviews, per-bucket stats and the CSV export."""

import mimetypes
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from .api_common import API, as_utc, line_of
from .auth import Access
from .csv_stream import stream_csv
from .schemas import ReviewIn, VerdictOut, verdict_json
from .store import InspectionFilter
from .store.records import REVIEW_STATUSES


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
    return InspectionFilter(since=as_utc(since), until=as_utc(until), verdicts=verdict, kinds=kind, decision=decision,
                            min_a=min_a, max_a=max_a, model_version=model_version, source=source,
                            review_status=review_status, unreviewed_only=unreviewed)


def _record(request: Request, inspection_id: int):
    record = line_of(request).store.get().get_inspection(inspection_id)
    if record is None:
        raise HTTPException(404, f"no inspection {inspection_id}")
    return record


def _file(request: Request, inspection_id: int, what: str) -> FileResponse:
    record = _record(request, inspection_id)
    path = line_of(request).files.resolve(record.image_path if what == "image" else record.overlay_path)
    if path is None:
        raise HTTPException(404, f"inspection {inspection_id} has no {what} file")
    # Only image types: an upload that decodes as an image yet is named .html is not served as a page.
    media = mimetypes.guess_type(path.name)[0] or ""
    return FileResponse(path, media_type=media if media.startswith("image/") else "application/octet-stream",
                        filename=path.name, content_disposition_type="inline",
                        headers={"X-Content-Type-Options": "nosniff"})


def inspections_router(access: Access) -> APIRouter:
    api = APIRouter(prefix=API)
    reads, writes = [Depends(access.read)], [Depends(access.write)]

    @api.get("/inspections", tags=["inspections"], dependencies=reads)
    def list_inspections(request: Request, where: Annotated[InspectionFilter, Depends(inspection_filter)],
                         limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                         offset: Annotated[int, Query(ge=0)] = 0, oldest_first: bool = False) -> dict[str, Any]:
        """A page of inspections (newest first unless ``oldest_first``) and the total selected."""
        store = line_of(request).store.get()
        items = store.query_inspections(where, limit=limit, offset=offset, newest_first=not oldest_first)
        return {"items": [verdict_json(r, r.id) for r in items], "total": store.count_inspections(where),
                "limit": limit, "offset": offset}

    @api.get("/inspections/{inspection_id}", tags=["inspections"], dependencies=reads,
             responses={200: {"model": VerdictOut}})
    def get_inspection(request: Request, inspection_id: int) -> dict[str, Any]:
        return verdict_json(_record(request, inspection_id), inspection_id)

    @api.get("/inspections/{inspection_id}/image", tags=["inspections"], dependencies=reads)
    def get_image(request: Request, inspection_id: int) -> FileResponse:
        return _file(request, inspection_id, "image")

    @api.get("/inspections/{inspection_id}/overlay", tags=["inspections"], dependencies=reads)
    def get_overlay(request: Request, inspection_id: int) -> FileResponse:
        return _file(request, inspection_id, "overlay")

    @api.post("/inspections/{inspection_id}/review", tags=["inspections"], dependencies=writes)
    def review(request: Request, inspection_id: int, body: ReviewIn) -> dict[str, Any]:
        """An operator's review: confirmed, corrected (with the right ``label``) or rejected."""
        store = line_of(request).store.get()
        if not store.review_inspection(inspection_id, body.status, body.label, body.by):
            raise HTTPException(404, f"no inspection {inspection_id}")
        return verdict_json(store.get_inspection(inspection_id), inspection_id)

    @api.get("/stats", tags=["inspections"], dependencies=reads)
    def stats(request: Request, since: datetime | None = None, until: datetime | None = None,
              bucket: Literal["minute", "hour", "day"] = "hour") -> dict[str, Any]:
        """Per UTC bucket in [since, until): total, ok, anomaly, defects per kind, yield."""
        rows = line_of(request).store.get().stats(as_utc(since), as_utc(until), bucket)
        return {"bucket": bucket, "buckets": [{**r, "bucket": r["bucket"].isoformat()} for r in rows]}

    @api.get("/export.csv", tags=["inspections"], dependencies=reads, response_class=StreamingResponse)
    def export_csv(request: Request, where: Annotated[InspectionFilter, Depends(inspection_filter)]):
        """The selected inspections, oldest first, as CSV (streamed)."""
        line = line_of(request)
        line.store.get().ping()  # a 503 now, rather than a cut-off download
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(stream_csv(line, where), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="inspections-{stamp}.csv"'})

    return api
