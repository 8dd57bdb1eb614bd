"""`GET /healthz`: liveness and whether the database answers; no token needed."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from citrus_deploy.web.dependencies import AppSettings, Pool
from citrus_deploy.web.http_errors import DB_DOWN


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]


router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is unreachable."}},
    summary="Liveness and database reachability (no token needed)",
)
async def healthz(pool: Pool, settings: AppSettings) -> JSONResponse:
    try:
        async with pool.connection(timeout=settings.db_timeout_seconds) as conn:
            await conn.execute("SELECT 1")
    except DB_DOWN:
        body = Health(status="degraded", database="unreachable")
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(Health(status="ok", database="ok").model_dump())
