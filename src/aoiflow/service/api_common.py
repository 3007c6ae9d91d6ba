"""What the line API's routers share: the prefix, the line behind a request, error answers."""

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from .pipeline import Line

API = "/api/v1"
STORE_RETRY_AFTER_S = 5


def line_of(request: Request) -> Line:
    return request.app.state.line


def as_utc(value: datetime | None) -> datetime | None:
    """Times without a zone are taken as UTC (the store keeps UTC only)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    """An error answer: ``{"detail": ..., **extra}``, with Retry-After when ``retry_after`` is given."""
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)
