"""The service's boot report endpoint for the boot tests: the real router (web/boot_reports.py)
and the real body limit in a minimal app, served by uvicorn on 127.0.0.1:<free port> in a thread.

The container shares the host's network, so the boot script reports to `url` as a droplet would
to the service; what the route accepts is in `boot_steps` of the boot test database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import psycopg_pool
import uvicorn
from fastapi import FastAPI

from citrus_deploy.web import boot_reports
from citrus_deploy.web.app import BodyLimit

BODY_LIMIT = 4096  # the service's default CITRUS_MAX_BODY_BYTES


class ReportService:
    """A context manager; `url` is what a stack's bootReportUrl would be."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with psycopg_pool.AsyncConnectionPool(
                self._conninfo, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
            ) as pool:
                app.state.pool = pool
                yield

        app = FastAPI(lifespan=lifespan)
        app.add_middleware(BodyLimit, limit=BODY_LIMIT, timeout=10)
        app.include_router(boot_reports.router)
        return app

    def __enter__(self) -> ReportService:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="reports", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the boot report service did not start")
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
