"""The baseline for bench/post_throughput.py: a bare FastAPI endpoint doing one INSERT.

Its pool is at least as fast as the service's: autocommit like the web's (the INSERT is one
round trip), every connection opened up front, and no per-checkout health check.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from psycopg_pool import AsyncConnectionPool


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        os.environ["DATABASE_URL"],
        min_size=10,
        max_size=10,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_rows (id bigserial, name text)")
    app.state.pool = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/insert", status_code=202)
async def insert(request: Request) -> dict[str, Any]:
    body = await request.json()
    async with request.app.state.pool.connection() as conn:
        await conn.execute("INSERT INTO bench_rows (name) VALUES (%s)", (body.get("name"),))
    return {"success": True, "name": body.get("name")}
