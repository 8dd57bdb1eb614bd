"""The console's sessions: signed cookies (a session's id, expiry and CSRF token; the mark of a
browser that signed in), the key they are signed with, and the sign-outs PostgreSQL keeps for
every web process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from citrus_deploy.web.console.queries import sql

COOKIE = "citrus_console"
CSRF_FIELD = "csrf"

# A browser that was signed in before is a client of its own for the sign-in limit (sign_in.py),
# so failures from its address, such as everyone behind a proxy that does not pass the client's
# address, do not lock it out.
DEVICE_COOKIE = "citrus_device"
DEVICE_SECONDS = 365 * 86400
# The cookies' key: scrypt of ADMIN_TOKEN salted with the random secret in PostgreSQL
# (console_secret). About 25 ms and 16 MiB, once per web process.
KDF = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Session:
    id: str  # what a sign-out records (console_signouts)
    csrf: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(admin_token: str, secret: bytes) -> bytes:
    """The key of the console's cookies: scrypt of ADMIN_TOKEN, salted with the random secret
    every web process reads from PostgreSQL (console_secret).

    Neither gives it alone: a cookie does not let the token be guessed offline (that needs the
    secret as well, and then costs an scrypt per guess), a database reader cannot sign cookies
    without the token, and a new ADMIN_TOKEN signs everyone out.
    """
    return hashlib.scrypt(admin_token.encode(), salt=secret, dklen=32, **KDF)


async def load_signing_key(pool: psycopg_pool.AsyncConnectionPool[Any], admin_token: str) -> bytes:
    """signing_key with the database's secret, which the first web process to ask creates."""
    async with pool.connection() as conn:
        cur = await conn.execute(sql()["console_secret"])
        row = await cur.fetchone()
    assert row is not None  # the upsert returns its row
    return await asyncio.to_thread(signing_key, admin_token, bytes(row[0]))


class Sessions:
    """Signed session cookies: `<payload>.<HMAC-SHA256 of it>`, payload = a random session id,
    expiry and CSRF token. (Whether the id was signed out is the database's: Guard.signed_in.)
    And device cookies, the same shape with a random device id: this browser was signed in.

    `key` is signing_key's, the same in every web process, so each checks the others' cookies.
    Sessions and devices are signed under keys of their own (derived from it): one kind of
    cookie is never taken for the other.
    """

    def __init__(self, key: bytes, lifetime: int) -> None:
        self._key = hmac.new(key, b"citrus console session v2", hashlib.sha256).digest()
        self._device_key = hmac.new(key, b"citrus console device v2", hashlib.sha256).digest()
        self.lifetime = lifetime

    @staticmethod
    def _sign(key: bytes, payload: str) -> str:
        return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())

    def _signed(self, key: bytes, data: dict[str, Any]) -> str:
        payload = _b64(json.dumps(data).encode())
        return f"{payload}.{self._sign(key, payload)}"

    def _open(self, key: bytes, cookie: str | None, now: float | None) -> dict[str, Any] | None:
        """The cookie's data if we signed it under `key` and it has not expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(self._sign(key, payload).encode(), signature.encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            expires = int(data["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= (now if now is not None else time.time()):
            return None
        return data if isinstance(data, dict) else None

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        expires = int(now if now is not None else time.time()) + self.lifetime
        session = Session(
            id=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(32), expires=expires
        )
        data = {"sid": session.id, "exp": expires, "csrf": session.csrf}
        return self._signed(self._key, data), session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        data = self._open(self._key, cookie, now)
        if data is None:
            return None
        try:
            return Session(id=str(data["sid"]), csrf=str(data["csrf"]), expires=int(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None

    def issue_device(self, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + DEVICE_SECONDS
        return self._signed(self._device_key, {"dev": secrets.token_urlsafe(16), "exp": expires})

    def read_device(self, cookie: str | None, now: float | None = None) -> str | None:
        """The device id of a device cookie we signed, unexpired; else None."""
        data = self._open(self._device_key, cookie, now)
        return str(data["dev"]) if data is not None and "dev" in data else None


async def signed_out(conn: psycopg.AsyncConnection[Any], session_id: str) -> bool:
    """Whether the session was signed out (console_signouts): one primary-key lookup."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql()["console_signed_out"], {"session_id": session_id})
    found = await cur.fetchone()
    return bool(found and found["signed_out"])


async def signed_out_among(
    pool: psycopg_pool.AsyncConnectionPool[Any], session_ids: Iterable[str]
) -> frozenset[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql()["console_signed_out_among"], {"session_ids": list(session_ids)}
        )
        return frozenset(str(row[0]) for row in await cur.fetchall())


async def record_sign_out(pool: psycopg_pool.AsyncConnectionPool[Any], session: Session) -> None:
    """Refuses the session in every web process until it expires (and prunes expired rows)."""
    async with pool.connection() as conn:
        await conn.execute(
            sql()["console_sign_out"], {"session_id": session.id, "expires": session.expires}
        )
