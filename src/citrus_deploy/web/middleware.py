"""ASGI middleware of the service: a bounded, timed request body, and HEAD answered as GET."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from citrus_deploy.web.http_errors import error


class BodyLimit:
    """413 for a body over `limit` bytes, whether announced (Content-Length) or streamed; 408
    for one not all there `timeout` seconds after the headers.

    The body (at most `limit` bytes) is read before the app sees any of it, so the deadline
    covers every route. uvicorn has no body deadline of its own: without this, a client that
    announces a body and stops half-way holds its connection and its task for ever.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        chunks: list[Message] = []
        seen = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    chunks.append(message)
                    if message["type"] != "http.request":
                        break
                    seen += len(message.get("body", b""))
                    if seen > self.limit or not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._too_slow(scope, receive, send)
            return
        if seen > self.limit:
            await self._reject(scope, receive, send)
            return

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, "body_too_large", f"the request body is over {self.limit} bytes")
        await response(scope, receive, send)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, or the server would wait on the same connection for the rest of
        # the body it just gave up on.
        response = error(
            408,
            "request_timeout",
            f"the request body did not arrive within {self.timeout:g} s (CITRUS_BODY_TIMEOUT)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class HeadAsGet:
    """HEAD answers what GET would, headers and all, without the body.

    FastAPI routes only the methods a route declares, and declaring HEAD would put a second
    operation per path into the OpenAPI schema.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server keeps its own scope, and with it knows this was a HEAD.
        await self.app({**scope, "method": "GET"}, receive, without_body)
