"""How the service answers errors: one JSON shape, an explicit status per domain error.

`{"success": false, "error": <code>, "message": ..., "fields": [...]}`. An unexpected exception
answers 500 with an incident id, never its text (the text is logged).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Literal

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Scope

from citrus_deploy.errors import CitrusError, DatabaseUnreachable, InvalidValue
from citrus_deploy.store.deployments import DeploymentConflict, NotFound
from citrus_deploy.web.failures import TooManyFailures

log = logging.getLogger("citrus.web")


class ErrorBody(BaseModel):
    success: Literal[False] = False
    error: str = Field(description="Machine-readable reason, e.g. `deployment_in_progress`.")
    message: str = Field(description="What went wrong and what to do, for people.")
    fields: list[dict[str, str]] = Field(
        default_factory=list, description="For bad input: each field and the rule it broke."
    )


def error(
    status: int,
    code: str,
    message: str,
    *,
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=code, message=message, fields=fields or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request body (not JSON).",
        401: "Missing or wrong bearer token.",
        404: "No such server or deployment.",
        408: "The request body did not arrive within CITRUS_BODY_TIMEOUT.",
        409: "A deployment is already queued or running for that name, or the name is in use.",
        413: "Request body too large.",
        422: "A value breaks its rule; `fields` names each.",
        429: "Too many wrong admin tokens from this client (`too_many_failures`): no token "
        "is checked for it before `Retry-After` seconds.",
        503: "The database is unreachable, or (`queue_full`) CITRUS_MAX_QUEUED deployments are "
        "queued or running; nothing was changed, retry after `Retry-After` seconds.",
    }
    return {c: {"model": ErrorBody, "description": descriptions[c]} for c in codes}


DB_DOWN = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    DatabaseUnreachable,
)

QUEUE_RETRY_AFTER = "60"


class QueueFull(CitrusError):
    """CITRUS_MAX_QUEUED deployments are queued or running: a new one would wait behind them."""


def _method_table(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each documented path and the methods of its operations."""
    table = []
    for path, operations in app.openapi()["paths"].items():
        regex, _, _ = compile_path(path)
        table.append((regex, frozenset(method.upper() for method in operations)))
    return table


def allowed_methods(app: FastAPI, scope: Scope, routed: str | None) -> list[str]:
    """`Allow` for a 405: the methods of every documented path that matches, HEAD with GET.

    Starlette's 405 names only the first route that matched the path (`routed`), and GET and
    DELETE of /admin/servers/{name} are two routes: it would answer `Allow: GET`. Paths outside
    the schema (/openapi.json, /docs) keep the routed methods.
    """
    table: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        app.state, "method_table", None
    )
    if table is None:
        table = app.state.method_table = _method_table(app)
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    found = {method for regex, methods in table if regex.match(path) for method in methods}
    if not found:
        found = {m.strip() for m in (routed or "").split(",") if m.strip()}
    if "GET" in found:
        found.add("HEAD")  # HeadAsGet
    return sorted(found)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error(400, "malformed_json", "the request body is not valid JSON")
        fields = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                "rule": str(e.get("msg", "invalid")),
            }
            for e in errors
        ]
        return error(422, "invalid_request", "the request breaks the API's schema", fields=fields)

    @app.exception_handler(InvalidValue)
    async def invalid_value(_: Request, exc: InvalidValue) -> JSONResponse:
        return error(
            422, "invalid_value", str(exc), fields=[{"field": exc.field, "rule": exc.rule}]
        )

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error(404, "not_found", str(exc))

    @app.exception_handler(DeploymentConflict)
    async def conflict(_: Request, exc: DeploymentConflict) -> JSONResponse:
        return error(
            409, exc.reason, str(exc), headers={"Location": f"/admin/servers/{exc.server_name}"}
        )

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unreachable: %s", type(exc).__name__)
        return error(
            503,
            "database_unavailable",
            "the database is unreachable; nothing was changed, retry later",
            headers={"Retry-After": "5"},
        )

    for cls in DB_DOWN:
        app.add_exception_handler(cls, database_down)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error(503, "queue_full", str(exc), headers={"Retry-After": QUEUE_RETRY_AFTER})

    @app.exception_handler(TooManyFailures)
    async def too_many_failures(_: Request, exc: TooManyFailures) -> JSONResponse:
        return error(
            429, "too_many_failures", str(exc), headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's own answer to a body it could not decode (not UTF-8, nested too deep):
            # the same error as JSON that does not parse.
            return error(400, "malformed_json", "the request body could not be read as JSON")
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope, headers.get("Allow")))
        return error(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error (incident %s)", incident, exc_info=exc)
        return error(
            500, "internal_error", f"internal error; the service log has incident {incident}"
        )
