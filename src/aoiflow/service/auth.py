"""The API's token checks, as FastAPI dependencies.

Writes need ``Authorization: Bearer <token>`` when a token is set, reads too with ``read_token``
(for reads the token may also come as the ``aoiflow_token`` cookie, which the pages set: a
browser's page loads, images and event stream cannot send headers; writes always need the header).
"""

import hmac
from collections.abc import Callable
from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .metrics import Metrics
from .settings import ServiceSettings

TOKEN_COOKIE = "aoiflow_token"  # the read token as the pages send it (see the module docstring)


class Access(NamedTuple):
    """The dependencies a route lists: ``Depends(access.read)`` or ``Depends(access.write)``."""

    read: Callable[..., None]
    write: Callable[..., None]


def token_checks(settings: ServiceSettings, metrics: Metrics) -> Access:
    """The read and write checks for ``settings``' tokens; a refusal counts as 'unauthorized'."""
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

    return Access(read=read_access, write=write_access)
