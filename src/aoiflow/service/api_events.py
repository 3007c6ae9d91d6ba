"""Live events under /api/v1: the line's ``EventHub`` as server-sent events."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from .api_common import API, line_of
from .auth import Access
from .events import EventHub

# An event stream ends after this long and the browser reconnects at once, resuming after the last
# event it saw: a server shutting down waits for open responses, and would wait forever on a page.
EVENTS_STREAM_S = 15.0
EVENTS_PING_S = 5.0     # a comment line this often keeps proxies from closing an idle stream
EVENTS_RETRY_MS = 500   # how soon the browser reconnects


def events_router(access: Access) -> APIRouter:
    api = APIRouter(prefix=API)

    @api.get("/events/state", tags=["live"], dependencies=[Depends(access.read)])
    def events_state(request: Request) -> dict[str, int]:
        """The id of the last event published (a page rendered now streams from after it)."""
        hub = line_of(request).events
        return {"last_id": hub.last_id, "subscribers": hub.subscribers}

    @api.get("/events", tags=["live"], dependencies=[Depends(access.read)], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(request: Request, after: Annotated[int | None, Query(ge=0)] = None,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        """Server-sent events as the line works: ``inspection`` (the verdict as POST /inspect
        answers it), ``alert`` and ``input_error``, each with an ``id`` to resume from (the
        browser's Last-Event-ID, else ``after``). A stream ends after a few seconds and the
        browser reconnects at once, missing nothing that happened meanwhile."""
        hub = line_of(request).events
        resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
        return StreamingResponse(_stream(hub, resume), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


async def _stream(hub: EventHub, resume: int | None) -> AsyncIterator[bytes]:
    """One stream's bytes: the kept events after ``resume``, then new ones, for EVENTS_STREAM_S."""
    loop = asyncio.get_running_loop()
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
