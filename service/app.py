"""The HTTP service: thin routes over service.deployments, OpenAPI at /openapi.json.

Every /admin route needs `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time).
Errors are JSON `{"success": false, "error": <code>, "message": ..., "fields": [...]}` with an
explicit status per domain error; an unexpected exception answers 500 without its text (it is
logged). The web process never runs Pulumi: it enqueues, and reads what workers recorded.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
import psycopg_pool
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from procrastinate import PsycopgConnector
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citrus import validation
from citrus.errors import CitrusError, DatabaseUnreachable, InvalidValue
from citrus.validation import SERVER_NAME_MAX
from db import queries
from service import deployments, tasks
from service.deployments import Deployment, DeploymentConflict, NotFound, Server
from service.pool import open_pool
from service.settings import Settings

log = logging.getLogger("citrus.web")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NAME_PATTERN = rf"^(?:{_LABEL}(?:\.{_LABEL})*)?$"  # empty = the generated name
PATH_NAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$"

STARTED_MESSAGE = "Server with agent deployment initiated"
DESTROY_MESSAGE = "Server destruction initiated"

# -- response and request shapes ---------------------------------------------------------------


class ErrorBody(BaseModel):
    success: Literal[False] = False
    error: str = Field(description="Machine-readable reason, e.g. `deployment_in_progress`.")
    message: str = Field(description="What went wrong and what to do, for people.")
    fields: list[dict[str, str]] = Field(
        default_factory=list, description="For bad input: each field and the rule it broke."
    )


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(
        None,
        description=(
            "Droplet name and hostname (letters, digits, '-', '.'; at most 63). Omitted, null "
            "or empty: `server-<unix millis>`, with the agent named `agent-<unix millis>` "
            "(the old platform's rule)."
        ),
        examples=["web-1"],
        # Documented for clients; enforced by citrus.validation.server_name, whose message
        # names the rule (the same check the Pulumi program runs).
        json_schema_extra={"pattern": NAME_PATTERN, "maxLength": SERVER_NAME_MAX},
    )


class AgentRef(BaseModel):
    id: str | None = Field(
        description="The agent's UUID. null until the deployment has created the agents row: "
        "poll the Location (GET /admin/servers/{name}) or use ?wait=true."
    )


class ServerRef(BaseModel):
    id: str | None = Field(
        description="The DigitalOcean droplet id. null until the droplet exists: poll the "
        "Location or use ?wait=true."
    )
    name: str
    status: str = Field(description="`provisioning` when accepted.")
    agent: AgentRef


class DeployAccepted(BaseModel):
    """The old platform's answer, key for key; unknown values are null."""

    success: bool
    message: str
    server: ServerRef


class AgentOut(BaseModel):
    id: str | None = Field(description="null until the agents row exists.")
    name: str | None = None
    status: Literal["offline", "online", "failed"] | None = Field(
        None, description="Set by the hub (online) and the stale check (failed)."
    )


class DeploymentOut(BaseModel):
    id: int
    kind: Literal["up", "destroy"]
    state: Literal["queued", "running", "succeeded", "failed", "needs_operator"]
    error: str | None = Field(description="Why the last attempt failed (null if none did).")
    attempts: int
    jobId: int | None
    outputs: dict[str, Any] | None = Field(description="Stack outputs after a successful up.")
    outputTail: str = Field(description="The last characters of the engine output.")
    createdAt: datetime
    startedAt: datetime | None
    updatedAt: datetime
    finishedAt: datetime | None


class ServerOut(BaseModel):
    id: str | None = Field(description="Droplet id; null until the droplet exists.")
    name: str
    status: Literal["provisioning", "active", "failed", "destroying", "needs_operator"]
    agent: AgentOut
    region: str | None
    size: str | None
    ipv4Address: str | None
    createdAt: datetime | None
    currentDeployment: DeploymentOut | None = Field(
        description="The deployment queued or running now, if any."
    )
    lastDeployment: DeploymentOut | None = Field(description="The last finished deployment.")


class DeployFinished(BaseModel):
    """?wait=true, deployment finished: success says whether it succeeded."""

    success: bool
    message: str
    server: ServerOut


class ServerSummaryOut(BaseModel):
    id: str | None
    name: str
    status: Literal["provisioning", "active", "failed", "destroying", "needs_operator"]
    ipv4Address: str | None
    agent: AgentOut
    deploymentId: int | None
    deploymentKind: Literal["up", "destroy"] | None
    deploymentState: Literal["queued", "running", "succeeded", "failed", "needs_operator"] | None
    deploymentError: str | None


class ServerList(BaseModel):
    servers: list[ServerSummaryOut]


class DestroyAccepted(BaseModel):
    success: bool
    message: str
    deployment: DeploymentOut


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]


def deployment_out(dep: Deployment) -> DeploymentOut:
    return DeploymentOut(
        id=dep.id,
        kind=dep.kind,  # type: ignore[arg-type]
        state=dep.state,  # type: ignore[arg-type]
        error=dep.error,
        attempts=dep.attempts,
        jobId=dep.job_id,
        outputs=dep.outputs,
        outputTail=dep.output_tail,
        createdAt=dep.created_at,
        startedAt=dep.started_at,
        updatedAt=dep.updated_at,
        finishedAt=dep.finished_at,
    )


def server_out(server: Server) -> ServerOut:
    return ServerOut(
        id=server.droplet_id,
        name=server.name,
        status=server.status,  # type: ignore[arg-type]
        agent=AgentOut(
            id=server.agent_id,
            name=server.agent_name,
            status=server.agent_status,  # type: ignore[arg-type]
        ),
        region=server.region,
        size=server.size,
        ipv4Address=server.ipv4_address,
        createdAt=server.created_at,
        currentDeployment=deployment_out(server.current) if server.current else None,
        lastDeployment=deployment_out(server.last) if server.last else None,
    )


# -- errors ------------------------------------------------------------------------------------


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


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request body (not JSON).",
        401: "Missing or wrong bearer token.",
        404: "No such server or deployment.",
        408: "The request body did not arrive within CITRUS_BODY_TIMEOUT.",
        409: "A deployment is already queued or running for that name, or the name is in use.",
        413: "Request body too large.",
        422: "A value breaks its rule; `fields` names each.",
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
ROOM_FRESH_SECONDS = 1.0


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


def _install_error_handlers(app: FastAPI) -> None:
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


class BodyLimit:
    """413 for a body over `limit` bytes, whether announced (Content-Length) or streamed; 408
    for one not all there `timeout` seconds after the headers.

    The body (at most `limit` bytes) is read before the app sees any of it, so the deadline
    covers every route. uvicorn has no body deadline of its own: without this, a client that
    announces a body and stops half-way holds its connection and its task for ever.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        chunks: list[Message] = []
        seen = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    chunks.append(message)
                    if message["type"] != "http.request":
                        break
                    seen += len(message.get("body", b""))
                    if seen > self.limit or not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._too_slow(scope, receive, send)
            return
        if seen > self.limit:
            await self._reject(scope, receive, send)
            return

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, "body_too_large", f"the request body is over {self.limit} bytes")
        await response(scope, receive, send)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, or the server would wait on the same connection for the rest of
        # the body it just gave up on.
        response = error(
            408,
            "request_timeout",
            f"the request body did not arrive within {self.timeout:g} s (CITRUS_BODY_TIMEOUT)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class HeadAsGet:
    """HEAD answers what GET would, headers and all, without the body.

    FastAPI routes only the methods a route declares, and declaring HEAD would put a second
    operation per path into the OpenAPI schema.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server keeps its own scope, and with it knows this was a HEAD.
        await self.app({**scope, "method": "GET"}, receive, without_body)


# -- dependencies ------------------------------------------------------------------------------
# `async def` although they never await: FastAPI runs a plain `def` dependency in a worker
# thread, a thread hand-off per dependency per request.

bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN of the service.")


async def authenticated(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the bearer token equals ADMIN_TOKEN (constant-time comparison)."""
    expected: bytes = request.app.state.admin_token
    given = creds.credentials.encode() if creds else b""
    if not hmac.compare_digest(given, expected):
        raise StarletteHTTPException(
            401,
            "a valid bearer token is required (Authorization: Bearer <ADMIN_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def get_pool(request: Request) -> psycopg_pool.AsyncConnectionPool[Any]:
    pool: psycopg_pool.AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[psycopg_pool.AsyncConnectionPool[Any], Depends(get_pool)]


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


# -- the app -----------------------------------------------------------------------------------


def web_pool(settings: Settings) -> psycopg_pool.AsyncConnectionPool[Any]:
    """In autocommit: every write of the web is one statement (an accepted POST is one round
    trip), and its reads need no transaction around them."""
    return open_pool(settings, max_size=settings.db_pool_size, autocommit=True)


DOCS_ASSETS = "/docs/assets"


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its script and styles served from the fastapi-offline package.

    FastAPI's own page loads them from a CDN without integrity checks, and operators type the
    admin token into that page ("Authorize"): no third-party script may run there.
    """
    assets = importlib.resources.files("fastapi_offline").joinpath("static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # null: no badge fetched from the online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )


def create_app(settings: Settings) -> FastAPI:
    """The ASGI app. Checks at once that the settings make valid stacks (SettingsError)."""
    settings.check_stack_config()
    tail = settings.output_tail_chars

    room = {"at": float("-inf"), "count": 0}  # the last count, and when it was taken

    async def queue_has_room(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        """QueueFull (503, nothing changed) while max_queued deployments are queued or running.

        Requests in flight at the same moment can each still see room, so the cap can be passed
        by as many as arrive together; it bounds a flood, it is not a quota. So a count under
        90% of the cap is reused for a second: an accepted POST stays one round trip.
        """
        cap = settings.max_queued
        if cap == 0:
            return
        now = asyncio.get_running_loop().time()
        if now - room["at"] < ROOM_FRESH_SECONDS and room["count"] + 1 < 0.9 * cap:
            room["count"] += 1  # this request's deployment, as far as this process knows
            return
        async with pool.connection() as conn:
            cur = await conn.execute(queries.load()["count_active_deployments"], {"cap": cap})
            row = await cur.fetchone()
        room["at"], room["count"] = now, (row[0] if row is not None else 0) + 1
        if row is not None and row[0] >= cap:
            raise QueueFull(
                f"{cap} deployments are queued or running (CITRUS_MAX_QUEUED); nothing was "
                f"changed, retry in {QUEUE_RETRY_AFTER} s"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = web_pool(settings)
        # wait=False: the service starts (and answers 503) while the database is down.
        await pool.open(wait=False)
        app.state.pool = pool
        app.state.admin_token = settings.admin_token.get_secret_value().encode()
        with tasks.app.replace_connector(PsycopgConnector()) as queue:
            async with queue.open_async(pool):
                yield
        await pool.close()

    app = FastAPI(
        title="citrus-deploy",
        summary="Deploy DigitalOcean droplets running a credentialed Citrus agent.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,  # _install_docs, when settings.docs_enabled
        redoc_url=None,  # CDN-only in FastAPI
        # Its redirect (/admin/servers/ -> /admin/servers) builds an absolute URL from the
        # request's Host header, which the client chooses: a 404 instead.
        redirect_slashes=False,
    )
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    app.add_middleware(HeadAsGet)
    _install_error_handlers(app)
    if settings.docs_enabled:
        _install_docs(app)
    admin = APIRouter(prefix="/admin", dependencies=[Depends(authenticated)])

    @admin.post(
        "/servers/deploy-with-agent",
        status_code=202,
        response_model=DeployAccepted,
        responses={
            200: {"model": DeployFinished, "description": "?wait=true and it finished."},
            202: {
                "model": DeployAccepted,
                "description": "Queued (or still running after the wait). Location: the server.",
            },
            **_responses(400, 401, 408, 409, 413, 422, 503),
        },
        summary="Deploy a new server with its agent",
    )
    async def deploy_with_agent(
        pool: Pool,
        body: DeployRequest | None = None,
        wait: Annotated[
            bool, Query(description="Wait (bounded) for the deployment to finish.")
        ] = False,
        timeout: Annotated[
            float | None,
            Query(gt=0, le=3600, description="Seconds to wait; capped by the service."),
        ] = None,
    ) -> JSONResponse:
        name = body.name if body and body.name else None
        await queue_has_room(pool)
        dep = await deployments.enqueue_up(pool, name)
        location = {"Location": f"/admin/servers/{dep.server_name}"}
        if wait:
            limit = min(timeout or settings.wait_max_seconds, settings.wait_max_seconds)
            # From here on the deployment is stored and queued: whatever cuts the wait short
            # (the database restarting, ...) the answer is the 202 below. An error answer would
            # read "nothing was changed", and its retry would queue a second server.
            try:
                dep = await deployments.wait_until_finished(pool, dep.id, limit)
                if dep.finished:
                    server = await deployments.get_server(pool, dep.server_name, tail=tail)
                    ok = dep.state == "succeeded"
                    message = (
                        "Server with agent deployed"
                        if ok
                        else f"Server deployment failed: {dep.error}"
                    )
                    finished = DeployFinished(
                        success=ok, message=message, server=server_out(server)
                    )
                    return JSONResponse(finished.model_dump(mode="json"), headers=location)
            except DB_DOWN as exc:
                log.warning(
                    "deployment %s queued; its wait ended early, database unreachable (%s)",
                    dep.id,
                    type(exc).__name__,
                )
            except Exception:
                log.exception("deployment %s queued; its wait ended early", dep.id)
        accepted = DeployAccepted(
            success=True,
            message=STARTED_MESSAGE,
            server=ServerRef(
                id=None, name=dep.server_name, status="provisioning", agent=AgentRef(id=None)
            ),
        )
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=location)

    @admin.get(
        "/servers",
        response_model=ServerList,
        responses=_responses(401, 422, 503),
        summary="List servers with their status and last deployment",
    )
    async def list_servers(
        pool: Pool,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> ServerList:
        found = await deployments.list_servers(pool, limit=limit, offset=offset)
        return ServerList(
            servers=[
                ServerSummaryOut(
                    id=s.droplet_id,
                    name=s.name,
                    status=s.status,  # type: ignore[arg-type]
                    ipv4Address=s.ipv4_address,
                    agent=AgentOut(
                        id=s.agent_id,
                        name=s.agent_name,
                        status=s.agent_status,  # type: ignore[arg-type]
                    ),
                    deploymentId=s.deployment_id,
                    deploymentKind=s.deployment_kind,  # type: ignore[arg-type]
                    deploymentState=s.deployment_state,  # type: ignore[arg-type]
                    deploymentError=s.deployment_error,
                )
                for s in found
            ]
        )

    @admin.get(
        "/servers/{name}",
        response_model=ServerOut,
        responses=_responses(401, 404, 422, 503),
        summary="One server: rows, status, IP, current and last deployment with output tail",
    )
    async def get_server(pool: Pool, name: ServerName) -> ServerOut:
        return server_out(await deployments.get_server(pool, name, tail=tail))

    @admin.delete(
        "/servers/{name}",
        status_code=202,
        response_model=DestroyAccepted,
        responses={
            202: {"description": "Destroy queued. Location: the deployment."},
            **_responses(401, 404, 409, 422, 503),
        },
        summary="Destroy the server's stack and its rows",
    )
    async def delete_server(pool: Pool, name: ServerName) -> JSONResponse:
        await queue_has_room(pool)
        dep = await deployments.enqueue_destroy(pool, name)
        body = DestroyAccepted(
            success=True, message=DESTROY_MESSAGE, deployment=deployment_out(dep)
        )
        return JSONResponse(
            body.model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/admin/deployments/{dep.id}"},
        )

    @admin.get(
        "/deployments/{deployment_id}",
        response_model=DeploymentOut,
        responses=_responses(401, 404, 422, 503),
        summary="One deployment with the tail of its output",
    )
    async def get_deployment(
        pool: Pool, deployment_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
    ) -> DeploymentOut:
        return deployment_out(await deployments.get_deployment(pool, deployment_id, tail=tail))

    app.include_router(admin)

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "The database is unreachable."}},
        summary="Liveness and database reachability (no token needed)",
    )
    async def healthz(pool: Pool) -> JSONResponse:
        try:
            async with pool.connection(timeout=settings.db_timeout_seconds) as conn:
                await conn.execute("SELECT 1")
        except DB_DOWN:
            body = Health(status="degraded", database="unreachable")
            return JSONResponse(body.model_dump(), status_code=503)
        return JSONResponse(Health(status="ok", database="ok").model_dump())

    return app
