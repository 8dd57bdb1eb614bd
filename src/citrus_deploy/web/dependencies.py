"""What the routes share: the bearer-token check, the pool, the settings, a checked server name.

`async def` although they never await: FastAPI runs a plain `def` dependency in a worker
thread, a thread hand-off per dependency per request.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

import psycopg_pool
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from citrus_deploy.program import validation
from citrus_deploy.program.validation import SERVER_NAME_MAX
from citrus_deploy.settings import Settings
from citrus_deploy.web.failures import FailureLimit, client_key

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NAME_PATTERN = rf"^(?:{_LABEL}(?:\.{_LABEL})*)?$"  # empty = the generated name
PATH_NAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$"

bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN of the service.")


async def authenticated(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the bearer token equals ADMIN_TOKEN (constant-time comparison).

    A client that sent too many wrong ones gets 429 (TooManyFailures) before its token is
    looked at: web/failures.py, the limit the console's sign-in shares. A request without
    an Authorization header guesses nothing and is not counted.
    """
    failures: FailureLimit = request.app.state.failures
    client, now = client_key(request), time.monotonic()
    failures.check(client, now)
    expected: bytes = request.app.state.admin_token
    given = creds.credentials.encode() if creds else b""
    if not hmac.compare_digest(given, expected):
        if "authorization" in request.headers:
            failures.add(client, now)
        raise StarletteHTTPException(
            401,
            "a valid bearer token is required (Authorization: Bearer <ADMIN_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def get_pool(request: Request) -> psycopg_pool.AsyncConnectionPool[Any]:
    pool: psycopg_pool.AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[psycopg_pool.AsyncConnectionPool[Any], Depends(get_pool)]


async def get_settings(request: Request) -> Settings:
    """The settings create_app was given (app.state.settings)."""
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings)]


async def server_name(
    name: Annotated[
        str,
        Path(
            description="The server's name.",
            json_schema_extra={"pattern": PATH_NAME_PATTERN, "maxLength": SERVER_NAME_MAX},
        ),
    ],
) -> str:
    """The name, checked by the rule every server name was created under (422 naming it).

    A name no server can have is a bad request rather than a miss, and it must not reach
    PostgreSQL: a NUL byte in a text parameter is an error there, not a row not found.
    """
    return validation.server_name(name, "name")


ServerName = Annotated[str, Depends(server_name)]
