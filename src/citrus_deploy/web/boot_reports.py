"""Boot reports: the droplet's boot script tells the service each step it reaches and how it ended.

`POST /boot-reports/{agent_id}` takes one JSON report (BootReport) signed by the droplet:
`X-Citrus-Timestamp: <unix seconds>` and `X-Citrus-Signature: sha256=<hex>`, an HMAC-SHA256 over
`<timestamp>.<body>` keyed by the 32 bytes of the agent's key, which the service reads from
`agents`; the key itself never travels. The route is not behind the admin token (the droplet has
none): the signature is its authentication. A refusal changes nothing: unknown agent 404, bad
signature 401, a timestamp outside the window 401, an exact duplicate 409, a body over the limit
413, more reports than an agent may send 429. The steps show in `GET /admin/servers/{name}`, and
the stale check records the last one an agent reached when it fails the agent (record_stale).
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import psycopg
import psycopg_pool
from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from citrus_deploy.store import queries
from citrus_deploy.store.boot_reports import Step

# A report is a few hundred bytes; a failure adds the log's last lines, which the script cuts
# to 1500 bytes (so a report stays under the service's default CITRUS_MAX_BODY_BYTES, 4096,
# which applies first). The limit here holds when that one is set higher.
MAX_REPORT_BYTES = 8 * 1024
# A report signed more than this many seconds before or after the service's clock is refused:
# a captured report cannot be replayed later (and within the window, not twice: 409).
TIMESTAMP_WINDOW_SECONDS = 300
# One boot sends 9 or 10 reports; the caps bound what a compromised droplet (it holds its key)
# can write: at most MAX_REPORTS_PER_AGENT rows in all, MAX_REPORTS_PER_MINUTE in any minute.
MAX_REPORTS_PER_AGENT = 100
MAX_REPORTS_PER_MINUTE = 20
FLOOD_RETRY_AFTER = "60"
STEPS_SHOWN = 50
# The last second PostgreSQL's timestamptz and every client shows: 9999-12-31T23:59:59Z. (A
# report's time of 10**15 was a 500: to_timestamp is out of range past year 294276.)
AT_MAX = 253_402_300_799

TIMESTAMP_HEADER = "X-Citrus-Timestamp"
SIGNATURE_HEADER = "X-Citrus-Signature"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


def _storable(text: str) -> str:
    """A text PostgreSQL can store: no NUL, and UTF-8 (no lone surrogate)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000): PostgreSQL text cannot hold it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be UTF-8 text (a lone surrogate is not)") from None
    return text


# Rejected with the field's name (422), not left for the INSERT to fail on (500).
StorableText = Annotated[str, AfterValidator(_storable)]


class BootReport(BaseModel):
    """One report as the boot script sends it (cloud_init/templates/user_data.sh.j2, `report`).

    Every value is bounded to what the boot_steps row can hold, so a report the schema accepts
    is one the database stores."""

    model_config = ConfigDict(extra="forbid")

    boot: str = Field(
        pattern=r"^[0-9a-f-]{0,36}$", description="Random id of this run of the script."
    )
    seq: int = Field(ge=1, le=10_000, description="The report's number within the run.")
    at: int = Field(
        ge=0, le=AT_MAX, description="When the step began (unix seconds, droplet's clock)."
    )
    step: Step
    label: StorableText = Field(max_length=300, description="The script's own name for the step.")
    event: Literal["step", "success", "failure"]
    exit: int | None = Field(None, ge=0, le=255, description="The script's exit status.")
    tail: StorableText = Field(
        "", max_length=4000, description="For a failure: the log's last lines."
    )


class BootStepOut(BaseModel):
    step: str = Field(description="start, packages, user, fetch, env, dependencies, unit, "
                      "verify; `stale` for the stale check's verdict.")  # fmt: skip
    label: str
    event: Literal["step", "success", "failure", "stale"]
    exitCode: int | None
    tail: str | None = Field(description="For a failure: the last lines of the boot log.")
    at: datetime = Field(description="When the step began, by the droplet's clock.")
    receivedAt: datetime


class Recorded(BaseModel):
    success: Literal[True] = True
    message: str


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        body = {"success": False, "error": self.code, "message": self.message, "fields": []}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


TOO_LARGE = Refusal(413, "body_too_large", f"a boot report is at most {MAX_REPORT_BYTES} bytes")
UNSIGNED = Refusal(
    401,
    "bad_signature",
    f"{TIMESTAMP_HEADER}: <unix seconds> and {SIGNATURE_HEADER}: sha256=<64 hex> are required",
)
BAD_SIGNATURE = Refusal(401, "bad_signature", "the signature does not match the agent's key")
UNKNOWN_AGENT = Refusal(404, "unknown_agent", "no agent with this id")
STALE = Refusal(
    401,
    "stale_timestamp",
    f"the report was signed more than {TIMESTAMP_WINDOW_SECONDS} s from the service's clock",
)
DUPLICATE = Refusal(409, "duplicate_report", "this report was already recorded")
TOO_MANY = Refusal(
    429,
    "too_many_reports",
    f"an agent may send at most {MAX_REPORTS_PER_AGENT} boot reports",
)
TOO_FAST = Refusal(
    429,
    "too_many_reports",
    f"an agent may send at most {MAX_REPORTS_PER_MINUTE} boot reports a minute",
    headers={"Retry-After": FLOOD_RETRY_AFTER},
)

_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        401: "Missing or bad signature, or a timestamp outside the window.",
        404: "No agent with this id.",
        409: "The same report was already recorded.",
        413: "Body over the limit.",
        422: "The report breaks its schema.",
        429: "The agent sent too many reports (Retry-After when it is per minute).",
        503: "The database is unreachable; nothing was recorded.",
    }.items()
}


def sign(key_hex: str, timestamp: str, body: bytes) -> str:
    """The hex signature of a report: HMAC-SHA256 over `<timestamp>.<body>`, key = its 32 bytes."""
    return hmac.new(bytes.fromhex(key_hex), timestamp.encode() + b"." + body, "sha256").hexdigest()


async def _pool(request: Request) -> psycopg_pool.AsyncConnectionPool[Any]:
    pool: psycopg_pool.AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[psycopg_pool.AsyncConnectionPool[Any], Depends(_pool)]

router = APIRouter(tags=["boot reports"])


@router.post(
    "/boot-reports/{agent_id}",
    status_code=201,
    response_model=Recorded,
    responses=_REFUSALS,
    summary="Record one step of a droplet's boot (signed with the agent key; no admin token)",
)
async def receive(
    request: Request,
    pool: Pool,
    agent_id: Annotated[uuid.UUID, Path(description="The agent whose droplet is booting.")],
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> JSONResponse:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REPORT_BYTES:
        return TOO_LARGE.response()
    body = await request.body()  # bounded: the app's BodyLimit read it, at most its limit
    if len(body) > MAX_REPORT_BYTES:
        return TOO_LARGE.response()
    given = _SIGNATURE.fullmatch(signature or "")
    if timestamp is None or not _TIMESTAMP.fullmatch(timestamp) or given is None:
        return UNSIGNED.response()
    sql = queries.load()
    async with pool.connection() as conn:
        cur = await conn.execute(sql["select_agent_key"], {"agent_id": agent_id})
        row = await cur.fetchone()
        if row is None:
            return UNKNOWN_AGENT.response()
        if not hmac.compare_digest(sign(row[0], timestamp, body), given.group(1)):
            return BAD_SIGNATURE.response()
        signed_at = int(timestamp)
        if abs(time.time() - signed_at) > TIMESTAMP_WINDOW_SECONDS:
            return STALE.response()
        try:
            report = BootReport.model_validate_json(body)
        except ValidationError as exc:
            return _invalid(exc)
        async with conn.transaction():
            refusal = await _record(conn, agent_id, report, signed_at, given.group(1))
    if refusal is not None:
        return refusal.response()
    message = f"boot report {report.seq} ({report.step}, {report.event}) recorded"
    return JSONResponse(Recorded(message=message).model_dump(), status_code=201)


async def _record(
    conn: psycopg.AsyncConnection[Any],
    agent_id: uuid.UUID,
    report: BootReport,
    signed_at: int,
    signature: str,
) -> Refusal | None:
    """Inserts the report unless it is a duplicate or over a cap; one agent at a time (the
    lock), so concurrent reports cannot pass a cap together."""
    sql = queries.load()
    params = {"agent_id": agent_id, "signature": signature}
    await conn.execute(sql["lock_boot_steps_of_agent"], params)
    cur = await conn.execute(sql["count_boot_steps_of_agent"], params)
    counts = await cur.fetchone()
    assert counts is not None
    duplicate, total, last_minute = counts
    if duplicate:
        return DUPLICATE
    if total >= MAX_REPORTS_PER_AGENT:
        return TOO_MANY
    if last_minute >= MAX_REPORTS_PER_MINUTE:
        return TOO_FAST
    cur = await conn.execute(
        sql["insert_boot_step"],
        {
            **params,
            "boot_id": report.boot,
            "seq": report.seq,
            "step": report.step,
            "label": report.label,
            "event": report.event,
            "exit_code": report.exit,
            "tail": report.tail if report.event == "failure" else None,
            "reported_at": report.at,
            "signed_at": signed_at,
        },
    )
    return None if await cur.fetchone() else DUPLICATE


def _invalid(exc: ValidationError) -> JSONResponse:
    fields = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "rule": e["msg"]}
        for e in exc.errors()
    ]
    body = {
        "success": False,
        "error": "invalid_report",
        "message": "the boot report breaks its schema",
        "fields": fields,
    }
    return JSONResponse(body, status_code=422)


# -- what GET /admin/servers/{name} and the stale check use --------------------------------------


async def steps_of(
    pool: psycopg_pool.AsyncConnectionPool[Any], agent_id: str | None
) -> list[BootStepOut]:
    """The agent's last STEPS_SHOWN boot steps, oldest first (none without an agent)."""
    if agent_id is None:
        return []
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            queries.load()["select_boot_steps"], {"agent_id": agent_id, "limit": STEPS_SHOWN}
        )
        rows = await cur.fetchall()
    return [
        BootStepOut(
            step=r["step"],
            label=r["label"],
            event=r["event"],
            exitCode=r["exit_code"],
            tail=r["tail"],
            at=r["reported_at"],
            receivedAt=r["received_at"],
        )
        for r in rows
    ]


def stopped_at(steps: list[BootStepOut]) -> str | None:
    """The stale check's verdict among the steps, if it failed the agent."""
    return next((s.label for s in reversed(steps) if s.event == "stale"), None)
