"""Signing in with the admin token (a session cookie, under the limit on wrong tokens every
bearer-token route shares) and signing out (recorded for every web process)."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from citrus_deploy.settings import Settings
from citrus_deploy.web.console.guard import NEXT, SIGN_IN, Guard, Refused
from citrus_deploy.web.console.render import PREFIX, SECURITY_HEADERS, page
from citrus_deploy.web.console.sessions import COOKIE, DEVICE_COOKIE, record_sign_out
from citrus_deploy.web.dependencies import Pool
from citrus_deploy.web.failures import FailureLimit, client_key

# Failed sign-ins: each answers after a delay, and past failures.MAX_FAILURES from one client
# within failures.FAILURE_WINDOW seconds the form is refused (429) until the window has passed:
# the limit every bearer-token route shares (web/failures.py). A browser that signed in before
# is a client of its own (sessions.DEVICE_COOKIE).
FAILED_SIGN_IN_DELAY = 0.5


class SignIn:
    def __init__(self, settings: Settings, guard: Guard) -> None:
        self.settings = settings
        self.guard = guard

    async def sign_in_page(self, request: Request, next: str | None = None) -> Response:
        if await self.guard.signed_in(request) is not None:
            return RedirectResponse(self._next(next), status_code=303, headers=SECURITY_HEADERS)
        return page("sign_in.html", next=self._next(next))

    @staticmethod
    def _next(target: str | None) -> str:
        return target if target and NEXT.fullmatch(target) and "//" not in target else PREFIX

    async def sign_in(self, request: Request) -> Response:
        if not self.guard.same_origin(request):
            raise Refused(403, "Refused: the form was sent from another site.")
        sessions = await self.guard.sessions(request)
        failures: FailureLimit = request.app.state.failures
        device = sessions.read_device(request.cookies.get(DEVICE_COOKIE))
        client = f"device {device}" if device else client_key(request)
        now = time.monotonic()
        wait = failures.blocked_for(client, now)
        fields = await self.guard.form(request)
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
            secure=self.guard.secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    async def sign_out(self, request: Request, pool: Pool) -> Response:
        session, _ = await self.guard.action(request)
        await record_sign_out(pool, session)
        response = RedirectResponse(SIGN_IN, status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(
            COOKIE, path=PREFIX, secure=self.guard.secure(request), httponly=True, samesite="lax"
        )
        return response
