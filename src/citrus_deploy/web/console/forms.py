"""The console's deploy, retry and destroy forms: each enqueues what the JSON API would, or
answers its page again with why nothing was done."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg_pool
from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from citrus_deploy.errors import InvalidValue
from citrus_deploy.store import deployments, servers
from citrus_deploy.store.deployments import DeploymentConflict, NotFound
from citrus_deploy.web.api import QueueRoom
from citrus_deploy.web.console.guard import Guard, Refused
from citrus_deploy.web.console.pages import Pages, server_name
from citrus_deploy.web.console.render import PREFIX, SECURITY_HEADERS
from citrus_deploy.web.dependencies import Pool
from citrus_deploy.web.http_errors import QUEUE_RETRY_AFTER, QueueFull


async def queue_has_room(request: Request, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    """CITRUS_MAX_QUEUED, checked by the JSON API's own QueueRoom (app.state.queue_room)."""
    room: QueueRoom = request.app.state.queue_room
    try:
        await room.check(pool)
    except QueueFull as exc:
        raise Refused(503, f"{exc}.", {"Retry-After": str(QUEUE_RETRY_AFTER)}) from None


class Forms:
    """The POSTs that change the fleet, each checked by Guard.action (origin, CSRF token)."""

    def __init__(self, guard: Guard, pages: Pages) -> None:
        self.guard = guard
        self.pages = pages

    async def deploy(self, request: Request, pool: Pool) -> Response:
        session, fields = await self.guard.action(request)
        name = fields.get("name", "").strip() or None
        try:
            await queue_has_room(request, pool)
            dep = await deployments.enqueue_up(pool, name)
        except (InvalidValue, DeploymentConflict) as exc:
            code = 422 if isinstance(exc, InvalidValue) else 409
            return await self.pages.fleet_page(pool, session, code, str(exc), name or "")
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(dep.server_name, safe='')}",
            status_code=303,
            headers=SECURITY_HEADERS,
        )

    async def retry(self, request: Request, name: str, pool: Pool) -> Response:
        session, _ = await self.guard.action(request)
        name = server_name(name)
        try:
            await queue_has_room(request, pool)
            # In the region and of the size the failed `up` was asked for.
            last = await servers.last_up_config(pool, name) or {}
            await deployments.enqueue_up(
                pool, name, region=last.get("region"), size=last.get("size")
            )
        except (InvalidValue, DeploymentConflict) as exc:
            code = 422 if isinstance(exc, InvalidValue) else 409
            return await self.pages.server_page(pool, session, name, status=code, message=str(exc))
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(name, safe='')}", status_code=303, headers=SECURITY_HEADERS
        )

    async def destroy(self, request: Request, name: str, pool: Pool) -> Response:
        session, fields = await self.guard.action(request)
        name = server_name(name)
        if fields.get("confirm", "") != name:
            return await self.pages.server_page(
                pool,
                session,
                name,
                status=422,
                message=f"Type the server's name, {name}, to confirm; nothing was destroyed.",
            )
        try:
            await queue_has_room(request, pool)
            await servers.enqueue_destroy(pool, name)
        except NotFound as exc:
            raise Refused(404, f"{exc}.") from None
        except DeploymentConflict as exc:
            return await self.pages.server_page(pool, session, name, status=409, message=str(exc))
        return RedirectResponse(
            f"{PREFIX}/servers/{quote(name, safe='')}", status_code=303, headers=SECURITY_HEADERS
        )
