"""The console's pages: the fleet (all servers, or those of one status), a server with its boot
steps, deployments and output, the console's static files, and the page of any other URL."""

from __future__ import annotations

from typing import Any

import psycopg_pool
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from psycopg.rows import dict_row

from citrus_deploy.errors import InvalidValue
from citrus_deploy.program import validation
from citrus_deploy.settings import Settings
from citrus_deploy.store import servers
from citrus_deploy.store.deployments import NotFound
from citrus_deploy.web import boot_reports
from citrus_deploy.web.console.fleet import load_fleet, only
from citrus_deploy.web.console.guard import Guard, Refused
from citrus_deploy.web.console.queries import sql
from citrus_deploy.web.console.render import PREFIX, SECURITY_HEADERS, STATUSES, WEB, page
from citrus_deploy.web.console.sessions import Session
from citrus_deploy.web.dependencies import Pool

HISTORY_SHOWN = 20  # deployments listed on a server's page

STATIC = {
    # name -> (media type, served signed out)
    "console.css": ("text/css; charset=utf-8", True),
    "console.js": ("text/javascript; charset=utf-8", False),
}


def status_filter(status: str | None) -> str | None:
    if status in (None, "", "all"):
        return None
    if status not in STATUSES:
        raise Refused(404, f"No such status {status!r}; it is one of {', '.join(STATUSES)}.")
    return status


def server_name(name: str) -> str:
    try:
        return validation.server_name(name, "name")
    except InvalidValue:
        raise Refused(404, f"No server named {name!r}.") from None


class Pages:
    """The GET pages; fleet_page and server_page also answer a form refused (forms.py)."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        self.settings = settings
        self.guard = guard

    # -- the fleet --------------------------------------------------------------------------

    async def fleet(self, request: Request, pool: Pool, status: str | None = None) -> Response:
        session = await self.guard.session(request)
        wanted = status_filter(status)
        rows = only(await load_fleet(pool), wanted)
        return page("fleet.html", session=session, rows=rows, shown=wanted)

    async def fleet_page(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        session: Session,
        status: int,
        message: str,
        name: str = "",
    ) -> Response:
        rows = await load_fleet(pool)
        return page(
            "fleet.html",
            status,
            session=session,
            rows=rows,
            shown=None,
            message=message,
            deploy_name=name,
        )

    # -- a server ---------------------------------------------------------------------------

    async def server_page(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        session: Session,
        name: str,
        *,
        status: int = 200,
        message: str | None = None,
        notice: str | None = None,
    ) -> Response:
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

    async def server(self, request: Request, name: str, pool: Pool) -> Response:
        session = await self.guard.session(request)
        return await self.server_page(pool, session, server_name(name))

    # -- the rest ---------------------------------------------------------------------------

    async def elsewhere(self, request: Request, rest: str) -> Response:
        await self.guard.session(request)
        if rest == "" and request.method == "GET":
            return RedirectResponse(PREFIX, status_code=303, headers=SECURITY_HEADERS)
        return page("error.html", 404, message="No such page.")

    async def static(self, request: Request, name: str) -> Response:
        found = STATIC.get(name)
        if found is None:
            raise Refused(404, "No such file.")
        media_type, public = found
        if not public:
            await self.guard.session(request)
        body = (WEB / "static" / name).read_bytes()
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return Response(body, media_type=media_type, headers=headers)
