"""The baseline for bench/post_throughput.py: a bare FastAPI endpoint doing one INSERT."""

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
        os.environ["DATABASE_URL"], min_size=10, max_size=10, open=False
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
