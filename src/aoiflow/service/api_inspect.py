"""POST /api/v1/inspect: an uploaded image through the line, its verdict as the answer."""

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .api_common import API, STORE_RETRY_AFTER_S, line_of, problem
from .auth import Access
from .files import safe_name
from .pipeline import InspectionFailed
from .schemas import VerdictOut
from .upload import FILE_FIELD, UploadRejected, receive_upload
from .worker import QueueFull, WorkerClosed

log = logging.getLogger(__name__)

MAX_SOURCE = 200

UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FILE_FIELD],
    "properties": {FILE_FIELD: {"type": "string", "format": "binary", "description": "the image"},
                   "source": {"type": "string", "description": "camera or station name (default 'upload')"}}}}}}}


def inspect_router(access: Access) -> APIRouter:
    api = APIRouter(prefix=API)

    @api.post("/inspect", tags=["inspect"], dependencies=[Depends(access.write)], openapi_extra=UPLOAD_DOC,
              responses={200: {"model": VerdictOut}, 413: {"description": "upload over --max-upload-mb"},
                         422: {"description": "not an image, a decompression bomb, unreadable"},
                         503: {"description": "queue full (Retry-After) or shutting down"}})
    async def inspect(request: Request) -> JSONResponse:
        """Judge one image: multipart form with the image in ``file`` and optionally ``source``."""
        line = line_of(request)
        metrics = line.metrics
        target = line.files.temp_path()
        try:
            upload = await receive_upload(request, target, line.settings.max_upload_bytes)
        except UploadRejected as exc:
            metrics.error("too_large" if exc.status == 413 else "bad_request")
            return problem(exc.status, exc.message)
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
            return problem(503, str(exc), retry_after=getattr(exc, "retry_after", STORE_RETRY_AFTER_S))
        try:
            # shielded: a client that goes away does not cancel a part already in the queue
            result = await asyncio.shield(asyncio.wrap_future(future))
        except InspectionFailed as exc:
            return problem(422, f"{file_name}: {exc.reason}", kind=exc.kind)
        except WorkerClosed as exc:
            return problem(503, str(exc), retry_after=STORE_RETRY_AFTER_S)
        except Exception:
            metrics.error("internal")
            log.exception("inspecting %s failed", file_name)
            return problem(500, f"{file_name}: inspection failed inside the service; see its log")
        return JSONResponse(result)

    return api
