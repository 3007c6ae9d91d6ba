"""The alert feed under /api/v1: list alerts, acknowledge one."""

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request

from .alerts import json_safe
from .api_common import API, line_of
from .auth import Access
from .schemas import AckIn


def alerts_router(access: Access) -> APIRouter:
    api = APIRouter(prefix=API)

    @api.get("/alerts", tags=["alerts"], dependencies=[Depends(access.read)])
    def alerts(request: Request, unacknowledged: bool = False,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Alerts, newest first; ``evidence_urls`` link each evidence inspection (its scores, and
        its image and overlay URLs)."""
        rows = line_of(request).store.get().list_alerts(unacknowledged_only=unacknowledged, limit=limit)
        return {"items": [{**json_safe(asdict(a)), "evidence_urls": [f"{API}/inspections/{i}" for i in a.evidence]}
                          for a in rows]}

    @api.post("/alerts/{alert_id}/ack", tags=["alerts"], dependencies=[Depends(access.write)])
    def acknowledge(request: Request, alert_id: int, body: Annotated[AckIn | None, Body()] = None) -> dict[str, Any]:
        by = (body or AckIn()).by
        if not line_of(request).store.get().acknowledge_alert(alert_id, by):
            raise HTTPException(404, f"no unacknowledged alert {alert_id}")
        return {"id": alert_id, "acknowledged": True, "by": by}

    return api
