"""The models under /api/v1: the registered versions and the active one; activating another."""

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .alerts import json_safe
from .api_common import API, line_of, problem
from .auth import Access
from .schemas import ActivateIn


def models_router(access: Access) -> APIRouter:
    api = APIRouter(prefix=API)

    @api.get("/models", tags=["models"], dependencies=[Depends(access.read)])
    def models(request: Request) -> dict[str, Any]:
        line = line_of(request)
        registered = line.store.get().list_models()
        return {"active": line.version, "supervised": str(line.supervised_path) if line.supervised_path else None,
                "models": [json_safe(asdict(m)) for m in registered]}

    @api.post("/models/activate", tags=["models"], dependencies=[Depends(access.write)])
    async def activate(request: Request, body: ActivateIn) -> JSONResponse:
        """Load another model and swap it in between two inspections (none is dropped)."""
        from aoiflow.runs import RunError

        line = line_of(request)
        supervised = Path(body.supervised) if body.supervised else None
        try:
            previous, active = await asyncio.to_thread(line.activate, Path(body.run), supervised)
        except (RunError, ValueError, OSError) as exc:
            return problem(422, f"cannot load {body.run}: {exc}")
        return JSONResponse({"active": active, "previous": previous})

    return api
