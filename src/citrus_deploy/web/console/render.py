"""How the console's pages are rendered: the Jinja environment over web/templates/, its filters
(ages and times as console.js shows them), and the headers every page answers with."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi.responses import HTMLResponse

from citrus_deploy.program.validation import SERVER_NAME_MAX
from citrus_deploy.store import boot_reports as store_boot_reports
from citrus_deploy.web.console.sessions import CSRF_FIELD

PREFIX = "/console"
STATUSES = ("provisioning", "active", "failed", "destroying", "needs_operator")

WEB = Path(__file__).resolve().parents[1]  # web/: the console's templates/ and static/
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
        loader=jinja2.FileSystemLoader(WEB / "templates"),
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
