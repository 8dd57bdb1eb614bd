"""Who may use the console: the request's session (its cookie signed by us, unexpired, not signed
out), the checks of a state-changing POST (origin, CSRF token), and the route class that sends
the signed-out to the sign-in page and turns refusals into pages."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import psycopg
import psycopg_pool
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from citrus_deploy.errors import DatabaseUnreachable
from citrus_deploy.settings import Settings
from citrus_deploy.web.console.render import PREFIX, SECURITY_HEADERS, page
from citrus_deploy.web.console.sessions import (
    COOKIE,
    CSRF_FIELD,
    DEVICE_COOKIE,
    DEVICE_SECONDS,
    Session,
    Sessions,
    load_signing_key,
    signed_out,
)
from citrus_deploy.web.dependencies import get_pool

log = logging.getLogger("citrus.console")

SIGN_IN = f"{PREFIX}/sign-in"
PUBLIC = frozenset({SIGN_IN, f"{PREFIX}/static/{{name}}"})  # console.js: signed in (static)
NEXT = re.compile(r"/console(?:/[A-Za-z0-9._-]+)*(?:\?[A-Za-z0-9=&_.-]*)?")  # where to return

DB_DOWN = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    DatabaseUnreachable,
)


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


# -- the route class: sign-in and refusals ----------------------------------------------------


def sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = SIGN_IN
    if request.method == "GET" and target != PREFIX and NEXT.fullmatch(target):
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


# -- the request's session ----------------------------------------------------------------------


class Guard:
    """Who is signed in, for one web process: the cookies' signer, its key read once, and the
    checks every route makes. (Failed sign-ins are the app's, app.state.failures: the
    bearer-token routes count them too.)"""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: Sessions | None = None
        self._sessions_loading = asyncio.Lock()

    async def sessions(self, request: Request) -> Sessions:
        """The cookies' signer, its key read from the database once per web process."""
        if self._sessions is None:
            async with self._sessions_loading:
                if self._sessions is None:
                    key = await load_signing_key(
                        await get_pool(request), self.settings.admin_token.get_secret_value()
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
            async with (await get_pool(request)).connection() as conn:
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
