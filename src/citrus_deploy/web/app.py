"""The HTTP service, assembled: settings, pool and queue in the lifespan, middleware, error
handlers, and the routers of each concern. OpenAPI at /openapi.json.

api.py is the admin JSON API (every /admin route needs `Authorization: Bearer <ADMIN_TOKEN>`,
dependencies.py), boot_reports.py what droplets report while they boot, health.py /healthz,
metrics.py /metrics (Prometheus, behind the same token), console/ the operator pages.
Errors are JSON with an explicit status per domain error (http_errors.py). The web process
never runs Pulumi: it enqueues, and reads what workers recorded.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg_pool
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from procrastinate import PsycopgConnector

from citrus_deploy.engine.stack_config import check_stack_config
from citrus_deploy.queue import tasks
from citrus_deploy.settings import Settings
from citrus_deploy.store.pool import open_pool
from citrus_deploy.web import api, boot_reports, console, health, metrics
from citrus_deploy.web.failures import FailureLimit
from citrus_deploy.web.http_errors import install_error_handlers
from citrus_deploy.web.middleware import BodyLimit, HeadAsGet


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
    check_stack_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = web_pool(settings)
        # wait=False: the service starts (and answers 503) while the database is down.
        await pool.open(wait=False)
        app.state.pool = pool
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
    app.state.settings = settings  # dependencies.get_settings
    app.state.admin_token = settings.admin_token.get_secret_value().encode()
    # Wrong admin tokens per client, for every route that takes one (web/failures.py).
    app.state.failures = FailureLimit()
    api.install_queue_room(app, settings)
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    app.add_middleware(HeadAsGet)
    install_error_handlers(app)
    if settings.docs_enabled:
        _install_docs(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        """The service's address in a browser: the operator console."""
        return RedirectResponse(console.PREFIX, status_code=303)

    app.include_router(api.router)
    app.include_router(boot_reports.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(console.router(settings))  # the operator pages, /console
    return app
