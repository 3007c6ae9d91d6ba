"""The page routes: each asks the API for what it shows (in-process, ``ApiClient``) and renders a
template. Scripts in ``static/`` then keep the page live (``/api/v1/events``) and write through
the API with the operator's token."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any, Self
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..auth import TOKEN_COOKIE
from . import HERE

PAGE_SIZE = 25
LIVE_FRAMES = 12
HISTOGRAM_NORMALS = 500
SECURITY_HEADERS = {
    # Only this service's own scripts, styles and images: no inline script, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
NAV = [("/", "Live", "live"), ("/inspections", "Inspections", "inspections"), ("/review", "Review", "review"),
       ("/labels", "Labels", "labels"), ("/alerts", "Alerts", "alerts"), ("/models", "Models", "models")]


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class ApiClient:
    """The service's own API, called in-process (no socket) with the caller's read token."""

    def __init__(self, request: Request) -> None:
        token = request.cookies.get(TOKEN_COOKIE)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=request.app, raise_app_exceptions=False),
                                      base_url="http://aoiflow.internal", headers=headers, timeout=60.0)

    async def get(self, path: str, params: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        r = await self.http.get(path, params=params)
        if r.status_code not in ok:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            if not isinstance(detail, str):  # a validation error's list: the first message is enough
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
            raise ApiError(r.status_code, detail)
        return r.json()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()


# -- template helpers -------------------------------------------------------------------------

def fmt_time(value: str | None, seconds: bool = True) -> str:
    if not value:
        return "–"
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return value
    return t.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + (" UTC" if t.utcoffset() is not None
                                                                              and not t.utcoffset() else "")


def fmt_clock(value: str | None) -> str:
    """HH:MM:SS of an ISO time (UTC, as the store keeps them)."""
    try:
        return datetime.fromisoformat(value).strftime("%H:%M:%S") if value else "–"
    except ValueError:
        return value or "–"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def verdict_class(verdict: str | None) -> str:
    if not verdict:
        return "none"
    if verdict == "ok":
        return "ok"
    if verdict.startswith("defect:"):
        return "defect"
    return "unknown" if verdict == "unknown_anomaly" else "anomaly"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(time=fmt_time, clock=fmt_clock, num=fmt_num, verdict_class=verdict_class)
templates.env.globals.update(nav=NAV)


def histogram(scores: list[float], a: float, threshold: float, bins: int = 30) -> dict[str, Any]:
    """Bars of ``scores`` (recent normal A) and where ``a`` and the threshold sit, as fractions of
    the width: the template draws it as an SVG."""
    values = [s for s in scores if math.isfinite(s)]
    marks = [v for v in (a, threshold) if math.isfinite(v)]
    lo, hi = min(values + marks, default=0.0), max(values + marks, default=1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    top = max(counts, default=0) or 1
    width = 1.0 / bins

    def x(v: float) -> float:
        return (v - lo) / (hi - lo) if math.isfinite(v) else -1.0

    bars = [{"x": i * width, "w": width, "h": c / top, "n": c, "from": lo + i * (hi - lo) / bins,
             "to": lo + (i + 1) * (hi - lo) / bins} for i, c in enumerate(counts)]
    above = sum(v > threshold for v in values)
    rank = sum(v < a for v in values) / len(values) if values else None
    return {"bars": bars, "a": x(a), "threshold": x(threshold), "lo": lo, "hi": hi, "n": len(values),
            "above": above, "rank": rank}


def _query(request: Request, **changes: Any) -> str:
    params = {k: v for k, v in request.query_params.items() if v != ""}
    params.update({k: v for k, v in changes.items() if v is not None})
    return "?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})


# -- the pages ----------------------------------------------------------------------------------

def pages() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    async def common(api: ApiClient, page: str) -> dict[str, Any]:
        queue, alerts, ready = await asyncio.gather(
            api.get("/api/v1/review/queue", {"limit": 1}), api.get("/api/v1/alerts", {"unacknowledged": True}),
            api.get("/readyz", ok=(200, 503)))
        return {"page": page, "queue_total": queue["total"], "open_alerts": len(alerts["items"]), "ready": ready}

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def failed(request: Request, page: str, exc: ApiError) -> HTMLResponse:
        return render(request, "error.html", {"page": page, "status": exc.status, "detail": exc.detail,
                                              "queue_total": None, "open_alerts": None, "ready": None},
                      status=exc.status if exc.status >= 400 else 500)

    @router.get("/", response_class=HTMLResponse)
    async def live(request: Request) -> HTMLResponse:
        async with ApiClient(request) as api:
            try:
                base = await common(api, "live")
                state, recent, stats, models, alerts = await asyncio.gather(
                    api.get("/api/v1/events/state"), api.get("/api/v1/inspections", {"limit": LIVE_FRAMES}),
                    api.get("/api/v1/stats", {"bucket": "minute"}), api.get("/api/v1/models"),
                    api.get("/api/v1/alerts", {"limit": 5}))
            except ApiError as exc:
                return failed(request, "live", exc)
        boot = {"after": state["last_id"], "items": recent["items"], "stats": stats["buckets"][-60:],
                "total": recent["total"]}
        return render(request, "live.html", {**base, "boot": boot, "items": recent["items"], "models": models,
                                             "alerts": alerts["items"], "total": recent["total"]})

    @router.get("/inspections", response_class=HTMLResponse)
    async def inspections(request: Request) -> HTMLResponse:
        q = request.query_params
        try:
            page = max(1, int(q.get("page") or 1))
        except ValueError:
            page = 1
        params: list[tuple[str, Any]] = [("limit", PAGE_SIZE), ("offset", (page - 1) * PAGE_SIZE)]
        for name in ("verdict", "kind", "decision", "source", "min_a", "max_a", "since", "until"):
            if q.get(name):
                params.append((name, q.get(name)))
        review = q.get("review") or ""
        if review == "unreviewed":
            params.append(("unreviewed", "true"))
        elif review:
            params.append(("review_status", review))
        error = None
        async with ApiClient(request) as api:
            try:
                base = await common(api, "inspections")
            except ApiError as exc:
                return failed(request, "inspections", exc)
            try:
                result = await api.get("/api/v1/inspections", params)
            except ApiError as exc:
                if exc.status != 422:
                    return failed(request, "inspections", exc)
                result, error = {"items": [], "total": 0}, exc.detail
        total = result["total"]
        pages_n = max(1, math.ceil(total / PAGE_SIZE))
        export = "/api/v1/export.csv?" + urlencode([p for p in params if p[0] not in ("limit", "offset")])
        return render(request, "inspections.html", {
            **base, "items": result["items"], "total": total, "page_no": page, "pages": pages_n, "q": q,
            "error": error, "first": (page - 1) * PAGE_SIZE + 1 if total else 0,
            "last": min(page * PAGE_SIZE, total), "export_url": export,
            "prev_url": _query(request, page=page - 1) if page > 1 else None,
            "next_url": _query(request, page=page + 1) if page < pages_n else None})

    @router.get("/inspections/{inspection_id}", response_class=HTMLResponse)
    async def inspection(request: Request, inspection_id: int) -> HTMLResponse:
        async with ApiClient(request) as api:
            try:
                base = await common(api, "inspections")
                item = await api.get(f"/api/v1/inspections/{inspection_id}")
                outlines, actions, normals = await asyncio.gather(
                    api.get(f"/api/v1/inspections/{inspection_id}/outlines", ok=(200, 404)),
                    api.get(f"/api/v1/inspections/{inspection_id}/actions"),
                    api.get("/api/v1/inspections", {"decision": "normal", "limit": HISTOGRAM_NORMALS}))
            except ApiError as exc:
                return failed(request, "inspections", exc)
        scores = [i["a"] for i in normals["items"] if i["id"] != inspection_id]
        has_outlines = "width" in outlines
        return render(request, "inspection.html", {
            **base, "item": item, "outlines": outlines if has_outlines else None, "actions": actions["items"],
            "hist": histogram(scores, item["a"], item["threshold"]),
            "shown": (outlines.get("reviewed") if has_outlines and outlines.get("reviewed") is not None
                      else outlines.get("prelabels", [])) if has_outlines else []})

    @router.get("/review", response_class=HTMLResponse)
    async def review(request: Request) -> HTMLResponse:
        q = request.query_params
        scratch = q.get("scratch") in ("1", "true")
        from_prelabels = q.get("prelabels") in ("1", "true")  # start from the pre-labels even when reviewed
        try:
            skip = max(0, int(q.get("skip") or 0))
            wanted = int(q["id"]) if q.get("id") else None
        except ValueError:
            skip, wanted = 0, None
        async with ApiClient(request) as api:
            try:
                base = await common(api, "review")
                classes = (await api.get("/api/v1/labels/classes"))["classes"]
                if wanted is not None:
                    item = await api.get(f"/api/v1/inspections/{wanted}")
                    total = base["queue_total"]
                else:
                    queue = await api.get("/api/v1/review/queue", {"limit": 1, "offset": skip})
                    item, total = (queue["items"][0] if queue["items"] else None), queue["total"]
                outlines = await api.get(f"/api/v1/inspections/{item['id']}/outlines") if item else None
            except ApiError as exc:
                return failed(request, "review", exc)
        extra = "&scratch=1" if scratch else ""
        editor = None
        if item is not None:
            regions = [] if scratch else (outlines["reviewed"] if outlines["reviewed"] is not None
                                          and not from_prelabels else outlines["prelabels"])
            editor = {"id": item["id"], "width": outlines["width"], "height": outlines["height"],
                      "image_url": item["image_url"], "overlay_url": item["overlay_url"], "regions": regions,
                      "classes": classes, "scratch": scratch,
                      "next_url": "/review" + (f"?skip={skip}{extra}" if wanted is None else ""),
                      "skip_url": f"/review?skip={skip + 1}{extra}" if wanted is None else "/review"}
        return render(request, "review.html", {**base, "item": item, "editor": editor, "total": total,
                                               "position": skip + 1, "scratch": scratch, "classes": classes,
                                               "wanted": wanted,
                                               "prev_url": f"/review?skip={skip - 1}{extra}" if skip > 0 else None})

    @router.get("/labels", response_class=HTMLResponse)
    async def labels(request: Request) -> HTMLResponse:
        async with ApiClient(request) as api:
            try:
                base = await common(api, "labels")
                summary, jobs = await asyncio.gather(api.get("/api/v1/labels/summary"), api.get("/api/v1/training"))
            except ApiError as exc:
                return failed(request, "labels", exc)
        return render(request, "labels.html", {**base, "summary": summary, "jobs": jobs["items"]})

    @router.get("/alerts", response_class=HTMLResponse)
    async def alerts(request: Request) -> HTMLResponse:
        async with ApiClient(request) as api:
            try:
                base = await common(api, "alerts")
                feed = await api.get("/api/v1/alerts", {"limit": 100})
                state = await api.get("/api/v1/events/state")
            except ApiError as exc:
                return failed(request, "alerts", exc)
        return render(request, "alerts.html", {**base, "alerts": feed["items"], "after": state["last_id"]})

    @router.get("/models", response_class=HTMLResponse)
    async def models(request: Request) -> HTMLResponse:
        async with ApiClient(request) as api:
            try:
                base = await common(api, "models")
                catalog = await api.get("/api/v1/models/catalog")
            except ApiError as exc:
                return failed(request, "models", exc)
        return render(request, "models.html", {**base, "catalog": catalog})

    return router
