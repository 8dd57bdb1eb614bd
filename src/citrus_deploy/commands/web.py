"""`citrus-deploy service web`: the HTTP service (uvicorn)."""

from __future__ import annotations

import argparse

import uvicorn

from citrus_deploy.settings import load_settings
from citrus_deploy.web.app import create_app

HELP = "the HTTP service (uvicorn)"


def run(_: argparse.Namespace) -> int:
    settings = load_settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # uvicorn has no deadline for request headers (a reverse proxy in front has one); what
        # it has: idle keep-alive connections closed after 5 s, request heads over 16 KiB
        # refused, and past CITRUS_MAX_CONNECTIONS open connections an immediate 503 instead of
        # running out of file descriptors. Bodies get CITRUS_BODY_TIMEOUT in the app (BodyLimit).
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=settings.max_connections,
        # The client's address is the connection's peer unless it is one of the proxies named
        # in CITRUS_FORWARDED_ALLOW_IPS. (uvicorn's default believes X-Forwarded-For from
        # 127.0.0.1, or from FORWARDED_ALLOW_IPS: a client on this machine, or any client of a
        # local proxy that does not set the header, could pose as any address.)
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
    )
    return 0
