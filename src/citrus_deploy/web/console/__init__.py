"""The operator console: server-rendered pages under /console over the same readers and
enqueue functions as the JSON API, with live updates by server-sent events.

Signing in with the admin token sets a session cookie (HMAC-signed, HttpOnly, SameSite=Lax,
Secure over https, with an expiry); every POST carries the session's CSRF token and must come
from this origin. Signing out records the session's id in PostgreSQL until it expires, so a copy
of the cookie is refused by every web process. Signed out, every console URL redirects to the
sign-in page. The live views never hold a database connection while idle: the fleet is read by
one poller per process and pushed to each open page only when its rows change; a deployment's
output is read per stream, a short query a second, from where the stream left off.

A module per concern, each importing only those before it (an import contract in
pyproject.toml): queries (console.sql), sessions (cookies, their key, sign-outs), render
(templates), fleet (its rows), guard (the request's session, the route class), pages and
folders (the GitOps page), forms (deploy, retry, destroy), sign_in, live (the streams). This
module assembles the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from citrus_deploy.settings import Settings
from citrus_deploy.web.console.folders import Folders
from citrus_deploy.web.console.forms import Forms
from citrus_deploy.web.console.guard import Guard, guarded_route
from citrus_deploy.web.console.live import Live
from citrus_deploy.web.console.pages import Pages
from citrus_deploy.web.console.render import PREFIX
from citrus_deploy.web.console.sign_in import SignIn

__all__ = ["PREFIX", "router"]

ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")


def router(settings: Settings) -> APIRouter:
    """The console's routes, for `app.include_router(console.router(settings))`."""
    guard = Guard(settings)
    signing = SignIn(settings, guard)
    pages = Pages(settings, guard)
    forms = Forms(guard, pages)
    live = Live(settings, guard)
    folders = Folders(guard)
    routes = APIRouter(
        prefix=PREFIX,
        route_class=guarded_route(guard.signed_in, guard.remember_device),
        include_in_schema=False,
    )
    table: Sequence[tuple[str, str, Callable[..., Awaitable[Response]]]] = (
        ("GET", "/sign-in", signing.sign_in_page),
        ("POST", "/sign-in", signing.sign_in),
        ("POST", "/sign-out", signing.sign_out),
        ("GET", "", pages.fleet),
        ("GET", "/events", live.fleet_events),
        ("POST", "/servers", forms.deploy),
        ("GET", "/servers/{name}", pages.server),
        ("POST", "/servers/{name}/retry", forms.retry),
        ("POST", "/servers/{name}/destroy", forms.destroy),
        ("GET", "/deployments/{deployment_id}/events", live.output_events),
        ("GET", "/gitops", folders.gitops),
        ("GET", "/static/{name}", pages.static),
    )
    for method, path, endpoint in table:
        routes.add_api_route(path, endpoint, methods=[method], response_class=HTMLResponse)
    # Last: any other URL under /console, signed out too, answers the redirect (or a 404 page).
    routes.add_api_route("/{rest:path}", pages.elsewhere, methods=list(ANY_METHOD))
    return routes
