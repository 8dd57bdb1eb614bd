"""Wrong admin tokens, counted per client: the one limit of the console's sign-in and of every
bearer-token route (/admin, /metrics).

Past MAX_FAILURES failures within FAILURE_WINDOW seconds a client is refused (429 with
Retry-After) without its token being looked at, until the oldest of them leaves the window.
A client is its address as uvicorn gives it (the proxy's X-Forwarded-For only from the
addresses in CITRUS_FORWARDED_ALLOW_IPS), an IPv6 client its /64 (one host holds a whole /64),
or, for the console, a browser that signed in before (web/console/sessions.py, device cookies).
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque

from fastapi import Request

from citrus_deploy.errors import CitrusError

MAX_FAILURES = 10
FAILURE_WINDOW = 300.0
TRACKED_CLIENTS = 10_000  # memory bound: about 1 KiB a client


class TooManyFailures(CitrusError):
    """The client sent MAX_FAILURES wrong tokens within FAILURE_WINDOW: 429, nothing checked."""

    def __init__(self, wait: float) -> None:
        self.retry_after = max(1, math.ceil(wait))
        super().__init__(
            f"{MAX_FAILURES} wrong admin tokens from this client within {FAILURE_WINDOW:g} s; "
            f"no token is checked for it for {self.retry_after} s"
        )


def client_key(request: Request) -> str:
    """Who the limit counts against: the client's address (an IPv6 one by its /64)."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"name {host[:255]}"  # not an address (a test client): counted by its name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class FailureLimit:
    """Failures per client in a sliding window, for one web process (app.state.failures).

    Memory is bounded: past TRACKED_CLIENTS the client whose last failure is the oldest is
    forgotten (clients are kept in that order), so making room costs nothing per request, and
    a client can be forgotten only after TRACKED_CLIENTS others failed since its last failure.
    """

    def __init__(self, tracked: int = TRACKED_CLIENTS) -> None:
        self.tracked = tracked
        self._seen: dict[str, deque[float]] = {}

    @staticmethod
    def _recent(found: deque[float], now: float) -> deque[float]:
        while found and found[0] <= now - FAILURE_WINDOW:
            found.popleft()
        return found

    def blocked_for(self, client: str, now: float) -> float:
        """Seconds until this client's token is checked again (0: it is now)."""
        found = self._seen.get(client)
        if found is None:
            return 0.0
        self._recent(found, now)
        return found[0] + FAILURE_WINDOW - now if len(found) >= MAX_FAILURES else 0.0

    def check(self, client: str, now: float) -> None:
        """Raises TooManyFailures while the client is over the limit."""
        wait = self.blocked_for(client, now)
        if wait > 0:
            raise TooManyFailures(wait)

    def add(self, client: str, now: float) -> None:
        found = self._recent(self._seen.pop(client, deque()), now)
        found.append(now)
        while len(self._seen) >= self.tracked:
            del self._seen[next(iter(self._seen))]
        self._seen[client] = found
