"""The operator console: server-rendered pages under /console over the same readers and
enqueue functions as the JSON API, with live updates by server-sent events.

Signing in with the admin token sets a session cookie (HMAC-signed, HttpOnly, SameSite=Lax,
Secure over https, with an expiry); every POST carries the session's CSRF token and must come
from this origin. Signing out records the session's id in PostgreSQL until it expires, so a copy
of the cookie is refused by every web process. Signed out, every console URL redirects to the
sign-in page. The live views never hold a database connection while idle: the fleet is read by
one poller per process and pushed to each open page only when its rows change; a deployment's
output is read per stream, a short query a second, from where the stream left off.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import importlib.resources
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import jinja2
import psycopg
import psycopg_pool
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from psycopg.rows import dict_row

from citrus_deploy.errors import DatabaseUnreachable, InvalidValue
from citrus_deploy.program import validation
from citrus_deploy.program.validation import SERVER_NAME_MAX
from citrus_deploy.settings import Settings
from citrus_deploy.store import boot_reports as store_boot_reports
from citrus_deploy.store import deployments, servers, states
from citrus_deploy.store.deployments import DeploymentConflict, NotFound
from citrus_deploy.web import boot_reports
from citrus_deploy.web.api import QueueRoom
from citrus_deploy.web.failures import FailureLimit, client_key
from citrus_deploy.web.http_errors import QUEUE_RETRY_AFTER, QueueFull

log = logging.getLogger("citrus.console")

PREFIX = "/console"
SIGN_IN = f"{PREFIX}/sign-in"
COOKIE = "citrus_console"
CSRF_FIELD = "csrf"

PUBLIC = frozenset({SIGN_IN, f"{PREFIX}/static/{{name}}"})  # console.js: signed in (static)
ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")

STATUSES = ("provisioning", "active", "failed", "destroying", "needs_operator")
FLEET_LIMIT = 1000  # the fleet page shows at most this many servers
HISTORY_SHOWN = 20  # deployments listed on a server's page

# Live updates. A stream ends after STREAM_SECONDS (or when its session expires) and the
# browser's EventSource reconnects by itself, so an expired session stops getting rows within
# that time; a signed-out one within a poll (each poll of the database checks the session). At
# most MAX_STREAMS are open per web process (the rest get 503), far under
# CITRUS_MAX_CONNECTIONS, which every open stream counts against.
FLEET_INTERVAL = 1.0
OUTPUT_INTERVAL = 1.0
HEARTBEAT_SECONDS = 15.0
STREAM_SECONDS = 600.0
MAX_STREAMS = 64
RECONNECT_MS = 2000
OUTPUT_CHUNK = 64 * 1024
OUTPUT_CAP = 1048576  # append_output keeps the last 1 MiB (db/queries.sql)

# Failed sign-ins: each answers after a delay, and past failures.MAX_FAILURES from one client
# within failures.FAILURE_WINDOW seconds the form is refused (429) until the window has passed:
# the limit every bearer-token route shares (service/failures.py). A browser that was signed in
# before is a client of its own (DEVICE_COOKIE), so failures from its address, such as everyone
# behind a proxy that does not pass the client's address, do not lock it out.
FAILED_SIGN_IN_DELAY = 0.5
DEVICE_COOKIE = "citrus_device"
DEVICE_SECONDS = 365 * 86400
# The cookies' key: scrypt of ADMIN_TOKEN salted with the random secret in PostgreSQL
# (console_secret). About 25 ms and 16 MiB, once per web process.
KDF = {"n": 2**14, "r": 8, "p": 1}

DB_DOWN = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    DatabaseUnreachable,
)

HERE = Path(__file__).resolve().parents[1]  # web/: templates/ and static/ beside the package
STATIC = {
    # name -> (media type, served signed out)
    "console.css": ("text/css; charset=utf-8", True),
    "console.js": ("text/javascript; charset=utf-8", False),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_SQL_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_NEXT = re.compile(r"/console(?:/[A-Za-z0-9._-]+)*(?:\?[A-Za-z0-9=&_.-]*)?")


@functools.cache
def sql() -> dict[str, str]:
    """The console's own statements (service/console.sql), by name."""
    text = importlib.resources.files(__package__ or "service").joinpath("console.sql").read_text()
    pieces = _SQL_NAME.split(text)
    return {name: body.strip() for name, body in zip(pieces[1::2], pieces[2::2], strict=True)}


# -- refusals the route class turns into pages ----------------------------------------------------


class SignedOut(Exception):
    """No valid session: the answer is a redirect to the sign-in page."""


class Refused(Exception):
    """A console request refused with a page: status, title and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# -- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: str  # what a sign-out records (console_signouts)
    csrf: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(admin_token: str, secret: bytes) -> bytes:
    """The key of the console's cookies: scrypt of ADMIN_TOKEN, salted with the random secret
    every web process reads from PostgreSQL (console_secret).

    Neither gives it alone: a cookie does not let the token be guessed offline (that needs the
    secret as well, and then costs an scrypt per guess), a database reader cannot sign cookies
    without the token, and a new ADMIN_TOKEN signs everyone out.
    """
    return hashlib.scrypt(admin_token.encode(), salt=secret, dklen=32, **KDF)


async def load_signing_key(pool: psycopg_pool.AsyncConnectionPool[Any], admin_token: str) -> bytes:
    """signing_key with the database's secret, which the first web process to ask creates."""
    async with pool.connection() as conn:
        cur = await conn.execute(sql()["console_secret"])
        row = await cur.fetchone()
    assert row is not None  # the upsert returns its row
    return await asyncio.to_thread(signing_key, admin_token, bytes(row[0]))


class Sessions:
    """Signed session cookies: `<payload>.<HMAC-SHA256 of it>`, payload = a random session id,
    expiry and CSRF token. (Whether the id was signed out is the database's: Console.signed_in.)
    And device cookies, the same shape with a random device id: this browser was signed in.

    `key` is signing_key's, the same in every web process, so each checks the others' cookies.
    Sessions and devices are signed under keys of their own (derived from it): one kind of
    cookie is never taken for the other.
    """

    def __init__(self, key: bytes, lifetime: int) -> None:
        self._key = hmac.new(key, b"citrus console session v2", hashlib.sha256).digest()
        self._device_key = hmac.new(key, b"citrus console device v2", hashlib.sha256).digest()
        self.lifetime = lifetime

    @staticmethod
    def _sign(key: bytes, payload: str) -> str:
        return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())

    def _signed(self, key: bytes, data: dict[str, Any]) -> str:
        payload = _b64(json.dumps(data).encode())
        return f"{payload}.{self._sign(key, payload)}"

    def _open(self, key: bytes, cookie: str | None, now: float | None) -> dict[str, Any] | None:
        """The cookie's data if we signed it under `key` and it has not expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(self._sign(key, payload).encode(), signature.encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            expires = int(data["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= (now if now is not None else time.time()):
            return None
        return data if isinstance(data, dict) else None

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        expires = int(now if now is not None else time.time()) + self.lifetime
        session = Session(
            id=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32), expires=expires
        )
        data = {"sid": session.id, "exp": expires, "csrf": session.csrf}
        return self._signed(self._key, data), session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        data = self._open(self._key, cookie, now)
        if data is None:
            return None
        try:
            return Session(id=str(data["sid"]), csrf=str(data["csrf"]), expires=int(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None

    def issue_device(self, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + DEVICE_SECONDS
        return self._signed(self._device_key, {"dev": secrets.token_urlsafe(16), "exp": expires})

    def read_device(self, cookie: str | None, now: float | None = None) -> str | None:
        """The device id of a device cookie we signed, unexpired; else None."""
        data = self._open(self._device_key, cookie, now)
        return str(data["dev"]) if data is not None and "dev" in data else None


async def signed_out(conn: psycopg.AsyncConnection[Any], session_id: str) -> bool:
    """Whether the session was signed out (console_signouts): one primary-key lookup."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql()["console_signed_out"], {"session_id": session_id})
    found = await cur.fetchone()
    return bool(found and found["signed_out"])


async def record_sign_out(pool: psycopg_pool.AsyncConnectionPool[Any], session: Session) -> None:
    """Refuses the session in every web process until it expires (and prunes expired rows)."""
    async with pool.connection() as conn:
        await conn.execute(
            sql()["console_sign_out"], {"session_id": session.id, "expires": session.expires}
        )


# -- what the pages show ----------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRow:
    name: str
    status: str
    region: str | None
    size: str | None
    ip: str | None
    agent_name: str | None
    agent_status: str | None
    deployment_id: int | None
    deployment_kind: str | None
    deployment_state: str | None
    deployment_error: str | None
    deployment_at: datetime | None
    managed_by: str | None


async def load_fleet(pool: psycopg_pool.AsyncConnectionPool[Any]) -> tuple[FleetRow, ...]:
    """Every server as the JSON API lists it, with region, size and its last deployment's time."""
    found = await servers.list_servers(pool, limit=FLEET_LIMIT)
    names = [s.name for s in found]
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            sql()["console_fleet_details"],
            {"names": names, "ids": [s.deployment_id for s in found]},
        )
        details = {r["name"]: r for r in await cur.fetchall()}
    rows = []
    for s in found:
        more = details.get(s.name, {})
        rows.append(
            FleetRow(
                name=s.name,
                status=s.status,
                region=more.get("region"),
                size=more.get("size"),
                ip=s.ipv4_address,
                agent_name=s.agent_name,
                agent_status=s.agent_status,
                deployment_id=s.deployment_id,
                deployment_kind=s.deployment_kind,
                deployment_state=s.deployment_state,
                deployment_error=s.deployment_error,
                deployment_at=more.get("finished_at") or more.get("created_at"),
                managed_by=s.managed_by.kind if s.managed_by else None,
            )
        )
    return tuple(rows)


def only(rows: Iterable[FleetRow], status: str | None) -> tuple[FleetRow, ...]:
    return tuple(r for r in rows if status is None or r.status == status)


async def signed_out_among(
    pool: psycopg_pool.AsyncConnectionPool[Any], session_ids: Iterable[str]
) -> frozenset[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql()["console_signed_out_among"], {"session_ids": list(session_ids)}
        )
        return frozenset(str(row[0]) for row in await cur.fetchall())


@dataclass
class FleetWatch:
    """One poller per web process: reads the fleet every FLEET_INTERVAL while a page listens,
    and wakes the listeners when it changed. With it, it reads which of the listening sessions
    were signed out, so their streams end within a poll. The connection is the pool's for one
    read only.

    The listeners wait on an asyncio.Event that the poller replaces at each change, never on a
    lock: a stream is cancelled whenever its client goes away, and a cancelled wait on a
    Condition (inside asyncio.wait_for) can leave its lock released by the wrong waiter, after
    which every stream and the poller block for good.
    """

    pool: psycopg_pool.AsyncConnectionPool[Any]
    rows: tuple[FleetRow, ...] | None = None
    version: int = 0
    listeners: dict[str, int] = field(default_factory=dict)  # session id -> open streams
    signed_out: frozenset[str] = frozenset()
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def join(self, session_id: str) -> None:
        self.listeners[session_id] = self.listeners.get(session_id, 0) + 1

    def leave(self, session_id: str) -> None:
        self.listeners[session_id] -= 1
        if self.listeners[session_id] <= 0:
            del self.listeners[session_id]

    def _publish(self, rows: tuple[FleetRow, ...], gone: frozenset[str]) -> None:
        """The new state, then every waiter woken (a new event for the next change)."""
        if rows != self.rows:
            self.rows, self.version = rows, self.version + 1
        self.signed_out = gone
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        try:
            while self.listeners:
                try:
                    rows = await load_fleet(self.pool)
                    gone = await signed_out_among(self.pool, self.listeners)
                except DB_DOWN as exc:
                    log.warning("console: fleet not read, database unreachable (%s)", type(exc))
                except Exception:
                    log.exception("console: fleet not read")
                else:
                    if rows != self.rows or gone != self.signed_out:
                        self._publish(rows, gone)
                await asyncio.sleep(FLEET_INTERVAL)
        finally:
            # However it ends, the next listener starts a new poller.
            self.rows, self.signed_out, self._task = None, frozenset(), None

    async def next(
        self, session_id: str, seen: int, timeout: float
    ) -> tuple[int, tuple[FleetRow, ...] | None]:
        """The rows once their version is past `seen`, or (seen, None) after `timeout` or once
        the session is in `signed_out`. Cancelling it (the client went away) leaves nothing
        behind: the only thing awaited is an Event."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if session_id in self.signed_out:
                        return seen, None
                    if self.version > seen and self.rows is not None:
                        return self.version, self.rows
                    await self._changed.wait()
        except TimeoutError:
            return seen, None


def age(then: datetime | None, now: datetime | None = None) -> str:
    """'12 s', '5 min', '3 h', '2 d' (the same rule as console.js)."""
    if then is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


@functools.cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=age, utc=utc, iso=iso, urlpart=lambda v: quote(str(v), safe=""))
    env.globals.update(
        prefix=PREFIX,
        statuses=STATUSES,
        server_name_max=SERVER_NAME_MAX,
        csrf_field=CSRF_FIELD,
        step_names=store_boot_reports.STEP_NAMES,
        failure_reason=store_boot_reports.failure_reason,
    )
    return env


def page(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    context.setdefault("session", None)
    context.setdefault("message", None)
    context.setdefault("notice", None)
    context.setdefault("deploy_name", "")
    html = templates().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def sse(event: str, data: str, event_id: str | None = None) -> bytes:
    """One server-sent event; each line of `data` becomes a `data:` line."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in re.split(r"\r\n|\r|\n", data)]
    return ("\n".join(lines) + "\n\n").encode()


# -- the route class: sign-in and refusals ----------------------------------------------------


def sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = SIGN_IN
    if request.method == "GET" and target != PREFIX and _NEXT.fullmatch(target):
        location += "?next=" + quote(target, safe="")
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def guarded_route(
    signed_in: Callable[[Request], Awaitable[Session | None]],
    signed_in_page: Callable[[Request, Response], Awaitable[None]],
) -> type[APIRoute]:
    """The route class of the console: signed out (`signed_in` answers None), any route but the
    public ones answers the sign-in redirect before FastAPI validates anything; Refused, bad
    parameters and an unreachable database answer a page. A page a signed-in GET answers goes
    through `signed_in_page` (which marks the browser as one that signed in)."""

    class ConsoleRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            public = self.path in PUBLIC

            async def guarded(request: Request) -> Response:
                try:
                    if not public and await signed_in(request) is None:
                        return sign_in_redirect(request)
                    response = await handler(request)
                    if (
                        not public
                        and request.method == "GET"
                        and response.status_code == 200
                        and isinstance(response, HTMLResponse)
                    ):
                        await signed_in_page(request, response)
                    return response
                except SignedOut:
                    return sign_in_redirect(request)
                except Refused as exc:
                    return page("error.html", exc.status, exc.headers, message=exc.message)
                except RequestValidationError:
                    return page("error.html", 404, message="No such page.")
                except DB_DOWN as exc:
                    log.warning("console: database unreachable (%s)", type(exc).__name__)
                    return page(
                        "error.html",
                        503,
                        {"Retry-After": "5"},
                        message="The database is unreachable; nothing was changed. Retry soon.",
                    )

            return guarded

    return ConsoleRoute


# -- the console ------------------------------------------------------------------------------


class Console:
    """The console's state in one web process: settings, the cookies' key, streams. (Failed
    sign-ins are the app's, app.state.failures: the bearer-token routes count them too.)"""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = 0
        self._watch: FleetWatch | None = None
        self._sessions: Sessions | None = None
        self._sessions_loading = asyncio.Lock()

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def pool(request: Request) -> psycopg_pool.AsyncConnectionPool[Any]:
        pool: psycopg_pool.AsyncConnectionPool[Any] = request.app.state.pool
        return pool

    async def sessions(self, request: Request) -> Sessions:
        """The cookies' signer, its key read from the database once per web process."""
        if self._sessions is None:
            async with self._sessions_loading:
                if self._sessions is None:
                    key = await load_signing_key(
                        self.pool(request), self.settings.admin_token.get_secret_value()
                    )
                    self._sessions = Sessions(key, self.settings.session_seconds)
        return self._sessions

    async def signed_in(self, request: Request) -> Session | None:
        """The request's session: its cookie signed by us, unexpired and not signed out. The
        database is asked only for a well-signed cookie, once per request (the answer is kept
        on the request for the route's own check)."""
        if hasattr(request.state, "console_session"):
            kept: Session | None = request.state.console_session
            return kept
        cookie = request.cookies.get(COOKIE)
        found = (await self.sessions(request)).read(cookie) if cookie else None
        if found is not None:
            async with self.pool(request).connection() as conn:
                if await signed_out(conn, found.id):
                    found = None
        request.state.console_session = found
        return found

    async def session(self, request: Request) -> Session:
        found = await self.signed_in(request)
        if found is None:
            raise SignedOut
        return found

    @staticmethod
    def same_origin(request: Request) -> bool:
        """Whether Origin (else Referer) names this host; neither sent: the token decides."""
        claimed = request.headers.get("origin") or request.headers.get("referer")
        if claimed is None:
            return True
        host = request.headers.get("host", "")
        return bool(host) and urlsplit(claimed).netloc == host

    async def form(self, request: Request) -> dict[str, str]:
        """The url-encoded form (the app's BodyLimit has already bounded the body)."""
        body = await request.body()
        try:
            fields = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "The form could not be read; reload the page and retry.") from None
        return dict(fields)

    async def action(self, request: Request) -> tuple[Session, dict[str, str]]:
        """A state-changing POST: signed in, from this origin, with the session's CSRF token."""
        session = await self.session(request)
        if not self.same_origin(request):
            raise Refused(403, "Refused: the form was sent from another site.")
        fields = await self.form(request)
        given = fields.get(CSRF_FIELD, "").encode()
        if not hmac.compare_digest(given, session.csrf.encode()):
            raise Refused(
                403, "Refused: the form's CSRF token is missing or wrong; reload and retry."
            )
        return session, fields

    async def remember_device(self, request: Request, response: Response) -> None:
        """Marks the browser of a signed-in page as one that signed in (DEVICE_COOKIE), unless
        it already carries a valid mark: its later sign-ins are limited as a client of their
        own, not with everyone else at its address."""
        sessions = await self.sessions(request)
        if sessions.read_device(request.cookies.get(DEVICE_COOKIE)) is None:
            response.set_cookie(
                DEVICE_COOKIE,
                sessions.issue_device(),
                max_age=DEVICE_SECONDS,
                path=PREFIX,
                secure=self.secure(request),
                httponly=True,
                samesite="lax",
            )

    def secure(self, request: Request) -> bool:
        configured = self.settings.cookie_secure
        return configured if configured is not None else request.url.scheme == "https"

    @staticmethod
    def server_name(name: str) -> str:
        try:
            return validation.server_name(name, "name")
        except InvalidValue:
            raise Refused(404, f"No server named {name!r}.") from None

    @staticmethod
    async def queue_has_room(request: Request, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        """CITRUS_MAX_QUEUED, checked by the JSON API's own QueueRoom (app.state.queue_room)."""
        room: QueueRoom = request.app.state.queue_room
        try:
            await room.check(pool)
        except QueueFull as exc:
            raise Refused(503, f"{exc}.", {"Retry-After": str(QUEUE_RETRY_AFTER)}) from None

    def stream(self, chunks: AsyncIterator[bytes]) -> StreamingResponse:
        if self.streams >= MAX_STREAMS:
            raise Refused(
                503, "Too many live views are open; reload in a minute.", {"Retry-After": "60"}
            )
        self.streams += 1

        async def counted() -> AsyncIterator[bytes]:
            try:
                yield f"retry: {RECONNECT_MS}\n\n".encode()
                async for chunk in chunks:
                    yield chunk
            finally:
                self.streams -= 1

        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(counted(), media_type="text/event-stream", headers=headers)

    @staticmethod
    def status_filter(status: str | None) -> str | None:
        if status in (None, "", "all"):
            return None
        if status not in STATUSES:
            raise Refused(404, f"No such status {status!r}; it is one of {', '.join(STATUSES)}.")
        return status

    # -- sign in and out --------------------------------------------------------------------

    async def sign_in_page(self, request: Request, next: str | None = None) -> Response:
        if await self.signed_in(request) is not None:
            return RedirectResponse(self._next(next), status_code=303, headers=SECURITY_HEADERS)
        return page("sign_in.html", next=self._next(next))

    @staticmethod
    def _next(target: str | None) -> str:
        return target if target and _NEXT.fullmatch(target) and "//" not in target else PREFIX

    async def sign_in(self, request: Request) -> Response:
        if not self.same_origin(request):
            raise Refused(403, "Refused: the form was sent from another site.")
        sessions = await self.sessions(request)
        failures: FailureLimit = request.app.state.failures
        device = sessions.read_device(request.cookies.get(DEVICE_COOKIE))
        client = f"device {device}" if device else client_key(request)
        now = time.monotonic()
        wait = failures.blocked_for(client, now)
        fields = await self.form(request)
        target = self._next(fields.get("next"))
        if wait > 0:
            return page(
                "sign_in.html",
                429,
                {"Retry-After": str(int(wait) + 1)},
                next=target,
                message=f"Too many failed sign-ins; try again in {int(wait) + 1} s.",
            )
        expected = self.settings.admin_token.get_secret_value().encode()
        if not hmac.compare_digest(fields.get("token", "").encode(), expected):
            failures.add(client, now)
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)
            return page("sign_in.html", 401, next=target, message="That is not the admin token.")
        cookie, _ = sessions.issue()
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=sessions.lifetime,
            path=PREFIX,
            secure=self.secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        session, _ = await self.action(request)
        await record_sign_out(self.pool(request), session)
        response = RedirectResponse(SIGN_IN, status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(
            COOKIE, path=PREFIX, secure=self.secure(request), httponly=True, samesite="lax"
        )
        return response

    # -- the fleet --------------------------------------------------------------------------

    async def fleet(self, request: Request, status: str | None = None) -> Response:
        session = await self.session(request)
        wanted = self.status_filter(status)
        rows = only(await load_fleet(self.pool(request)), wanted)
        return page("fleet.html", session=session, rows=rows, shown=wanted)

    async def _fleet_page(
        self, request: Request, session: Session, status: int, message: str, name: str = ""
    ) -> Response:
        rows = await load_fleet(self.pool(request))
        return page(
            "fleet.html",
            status,
            session=session,
            rows=rows,
            shown=None,
            message=message,
            deploy_name=name,
        )

    async def fleet_events(self, request: Request, status: str | None = None) -> Response:
        session = await self.session(request)
        wanted = self.status_filter(status)
        if self._watch is None:
            self._watch = FleetWatch(self.pool(request))
        watch = self._watch
        rows_template = templates().get_template("_fleet_rows.html")

        async def events() -> AsyncIterator[bytes]:
            watch.join(session.id)
            try:
                seen, sent = 0, None
                end = time.monotonic() + min(STREAM_SECONDS, session.expires - time.time())
                while (left := end - time.monotonic()) > 0:
                    seen, rows = await watch.next(session.id, seen, min(HEARTBEAT_SECONDS, left))
                    if session.id in watch.signed_out:
                        return
                    if rows is None:
                        yield b": idle\n\n"
                        continue
                    mine = only(rows, wanted)
                    if mine != sent:
                        sent = mine
                        html = rows_template.render(rows=mine, shown=wanted)
                        yield sse("fleet", html)
            finally:
                watch.leave(session.id)

        return self.stream(events())

    async def deploy(self, request: Request) -> Response:
        session, fields = await self.action(request)
        name = fields.get("name", "").strip() or None
        pool = self.pool(request)
        try:
            await self.queue_has_room(request, pool)
            dep = await deployments.enqueue_up(pool, name)
        except (InvalidValue, DeploymentConflict) as exc:
            code = 422 if isinstance(exc, InvalidValue) else 409
            return await self._fleet_page(request, session, code, str(exc), name or "")
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(dep.server_name, safe='')}",
            status_code=303,
            headers=SECURITY_HEADERS,
        )

    # -- a server ---------------------------------------------------------------------------

    async def _server_page(
        self,
        request: Request,
        session: Session,
        name: str,
        *,
        status: int = 200,
        message: str | None = None,
        notice: str | None = None,
    ) -> Response:
        pool = self.pool(request)
        try:
            server = await servers.get_server(pool, name, tail=self.settings.output_tail_chars)
        except NotFound as exc:
            raise Refused(404, f"{exc}.") from None
        steps = await boot_reports.steps_of(pool, server.agent_id)
        stopped = boot_reports.stopped_at(steps) if server.agent_status == "failed" else None
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                sql()["console_deployments_of"], {"server_name": name, "limit": HISTORY_SHOWN}
            )
            history = await cur.fetchall()
            running = None
            if server.current is not None:
                await cur.execute(
                    sql()["console_output_start"],
                    {"id": server.current.id, "tail": self.settings.output_tail_chars},
                )
                running = await cur.fetchone()
        failure = next((s for s in reversed(steps) if s.event == "failure"), None)
        return page(
            "server.html",
            status,
            session=session,
            server=server,
            steps=steps,
            stopped=stopped,
            failure=failure,
            history=history,
            running=running,
            message=message,
            notice=notice,
        )

    async def server(self, request: Request, name: str) -> Response:
        session = await self.session(request)
        return await self._server_page(request, session, self.server_name(name))

    async def retry(self, request: Request, name: str) -> Response:
        session, _ = await self.action(request)
        name = self.server_name(name)
        pool = self.pool(request)
        try:
            await self.queue_has_room(request, pool)
            # In the region and of the size the failed `up` was asked for.
            last = await servers.last_up_config(pool, name) or {}
            await deployments.enqueue_up(
                pool, name, region=last.get("region"), size=last.get("size")
            )
        except (InvalidValue, DeploymentConflict) as exc:
            code = 422 if isinstance(exc, InvalidValue) else 409
            return await self._server_page(request, session, name, status=code, message=str(exc))
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(name, safe='')}", status_code=303, headers=SECURITY_HEADERS
        )

    async def destroy(self, request: Request, name: str) -> Response:
        session, fields = await self.action(request)
        name = self.server_name(name)
        if fields.get("confirm", "") != name:
            return await self._server_page(
                request,
                session,
                name,
                status=422,
                message=f"Type the server's name, {name}, to confirm; nothing was destroyed.",
            )
        pool = self.pool(request)
        try:
            await self.queue_has_room(request, pool)
            await servers.enqueue_destroy(pool, name)
        except NotFound as exc:
            raise Refused(404, f"{exc}.") from None
        except DeploymentConflict as exc:
            return await self._server_page(request, session, name, status=409, message=str(exc))
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(name, safe='')}", status_code=303, headers=SECURITY_HEADERS
        )

    async def output_events(self, request: Request, deployment_id: int, start: int = 0) -> Response:
        session = await self.session(request)
        resume = request.headers.get("last-event-id", "")
        offset = int(resume) if resume.isdigit() and len(resume) < 12 else max(0, start)
        pool = self.pool(request)
        tail = self.settings.output_tail_chars

        async def read(query: str, params: dict[str, Any]) -> dict[str, Any] | None:
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                row: dict[str, Any] | None = await cur.fetchone()
                return row

        async def tick() -> dict[str, Any] | None:
            """The output not sent yet, or None if the deployment is gone; raises SignedOut
            once the session was signed out (checked on the same connection, every poll)."""
            async with pool.connection() as conn:
                if await signed_out(conn, session.id):
                    raise SignedOut
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(
                    sql()["console_output_since"],
                    {"id": deployment_id, "from": offset, "max": OUTPUT_CHUNK},
                )
                row: dict[str, Any] | None = await cur.fetchone()
                return row

        async def events() -> AsyncIterator[bytes]:
            nonlocal offset
            last_change: datetime | None = None
            idle_since = time.monotonic()
            end = time.monotonic() + min(STREAM_SECONDS, session.expires - time.time())
            while time.monotonic() < end:
                try:
                    row = await tick()
                except SignedOut:
                    return
                except DB_DOWN:
                    row = {}  # try again at the next tick
                if row is None:
                    yield sse("gone", "{}")
                    return
                if row:
                    capped = row["length"] >= OUTPUT_CAP and row["updated_at"] != last_change
                    if row["length"] < offset or (not row["more"] and capped and last_change):
                        # The output was cut to its last 1 MiB: start again from its tail.
                        found = await read(
                            sql()["console_output_start"], {"id": deployment_id, "tail": tail}
                        )
                        text = (found or {}).get("tail", "")
                        offset = row["length"]
                        yield sse("reset", json.dumps({"text": text}), str(offset))
                    elif row["more"]:
                        offset += len(row["more"])
                        yield sse("output", json.dumps({"text": row["more"]}), str(offset))
                        idle_since = time.monotonic()
                    last_change = row["updated_at"]
                    if row["state"] in states.FINISHED and offset >= row["length"]:
                        yield sse("done", json.dumps({"state": row["state"]}))
                        return
                if time.monotonic() - idle_since >= HEARTBEAT_SECONDS:
                    yield b": idle\n\n"
                    idle_since = time.monotonic()
                await asyncio.sleep(OUTPUT_INTERVAL)

        return self.stream(events())

    async def elsewhere(self, request: Request, rest: str) -> Response:
        await self.session(request)
        if rest == "" and request.method == "GET":
            return RedirectResponse(PREFIX, status_code=303, headers=SECURITY_HEADERS)
        return page("error.html", 404, message="No such page.")

    async def static(self, request: Request, name: str) -> Response:
        found = STATIC.get(name)
        if found is None:
            raise Refused(404, "No such file.")
        media_type, public = found
        if not public:
            await self.session(request)
        body = (HERE / "static" / name).read_bytes()
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(body, media_type=media_type, headers=headers)


def router(settings: Settings) -> APIRouter:
    """The console's routes, for `app.include_router(console.router(settings))`."""
    console = Console(settings)
    routes = APIRouter(
        prefix=PREFIX,
        route_class=guarded_route(console.signed_in, console.remember_device),
        include_in_schema=False,
    )
    table: Sequence[tuple[str, str, Callable[..., Awaitable[Response]]]] = (
        ("GET", "/sign-in", console.sign_in_page),
        ("POST", "/sign-in", console.sign_in),
        ("POST", "/sign-out", console.sign_out),
        ("GET", "", console.fleet),
        ("GET", "/events", console.fleet_events),
        ("POST", "/servers", console.deploy),
        ("GET", "/servers/{name}", console.server),
        ("POST", "/servers/{name}/retry", console.retry),
        ("POST", "/servers/{name}/destroy", console.destroy),
        ("GET", "/deployments/{deployment_id}/events", console.output_events),
        ("GET", "/static/{name}", console.static),
    )
    for method, path, endpoint in table:
        routes.add_api_route(path, endpoint, methods=[method], response_class=HTMLResponse)
    # Last: any other URL under /console, signed out too, answers the redirect (or a 404 page).
    routes.add_api_route("/{rest:path}", console.elsewhere, methods=list(ANY_METHOD))
    return routes
