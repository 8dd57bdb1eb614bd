"""The admin JSON API: deploy, list, show and destroy servers, show a deployment.

Thin routes over service.deployments, every one behind the admin token (dependencies.py);
domain errors become their status in http_errors.py. The web process never runs Pulumi: it
enqueues, and reads what workers recorded.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any

import psycopg_pool
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from citrus_deploy.program.validation import REGION_PATTERN, SERVER_NAME_MAX, SIZE_MAX, SIZE_PATTERN
from citrus_deploy.settings import Settings
from citrus_deploy.store import deployments, queries, records, servers
from citrus_deploy.store.deployments import Deployment
from citrus_deploy.store.ownership import GitOpsStatus, ManagedBy
from citrus_deploy.store.servers import Server
from citrus_deploy.store.states import (
    AgentStatus,
    DeploymentState,
    GitOpsState,
    Kind,
    Manager,
    ServerStatus,
)
from citrus_deploy.web import boot_reports
from citrus_deploy.web.dependencies import (
    NAME_PATTERN,
    AppSettings,
    Pool,
    ServerName,
    authenticated,
)
from citrus_deploy.web.http_errors import DB_DOWN, QUEUE_RETRY_AFTER, QueueFull, responses

log = logging.getLogger("citrus.web")

STARTED_MESSAGE = "Server with agent deployment initiated"
DESTROY_MESSAGE = "Server destruction initiated"
ROOM_FRESH_SECONDS = 1.0

# -- response and request shapes ---------------------------------------------------------------


class DeployRequest(BaseModel):
    """What a POST may set. Any other field is refused (422 naming it): one ignored silently
    (`regoin`) would deploy something else than was asked."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        description=(
            "Droplet name and hostname (letters, digits, '-', '.'; at most 63). Omitted, null "
            "or empty: `server-<unix millis>`, with the agent named `agent-<unix millis>` "
            "(the old platform's rule)."
        ),
        examples=["web-1"],
        # Documented for clients; enforced by program.validation.server_name, whose message
        # names the rule (the same check the Pulumi program runs).
        json_schema_extra={"pattern": NAME_PATTERN, "maxLength": SERVER_NAME_MAX},
    )
    region: str | None = Field(
        None,
        description="DigitalOcean region slug. Omitted or null: Pulumi.yaml's default (sfo3).",
        examples=["nyc3"],
        # Enforced by program.validation.region, the rule the Pulumi program runs.
        json_schema_extra={"pattern": REGION_PATTERN},
    )
    size: str | None = Field(
        None,
        description="DigitalOcean size slug. Omitted or null: Pulumi.yaml's default "
        "(s-1vcpu-512mb-10gb).",
        examples=["s-2vcpu-4gb"],
        # Enforced by program.validation.size.
        json_schema_extra={"pattern": SIZE_PATTERN, "maxLength": SIZE_MAX},
    )


class AgentRef(BaseModel):
    id: str | None = Field(
        description="The agent's UUID. null until the deployment has created the agents row: "
        "poll the Location (GET /admin/servers/{name}) or use ?wait=true."
    )


class ServerRef(BaseModel):
    id: str | None = Field(
        description="The DigitalOcean droplet id. null until the droplet exists: poll the "
        "Location or use ?wait=true."
    )
    name: str
    status: str = Field(description="`provisioning` when accepted.")
    agent: AgentRef


class DeployAccepted(BaseModel):
    """The old platform's answer, key for key; unknown values are null."""

    success: bool
    message: str
    server: ServerRef


class AgentOut(BaseModel):
    id: str | None = Field(description="null until the agents row exists.")
    name: str | None = None
    status: AgentStatus | None = Field(
        None, description="Set by the hub (online) and the stale check (failed)."
    )


class DeploymentOut(BaseModel):
    id: int
    kind: Kind
    state: DeploymentState
    error: str | None = Field(description="Why the last attempt failed (null if none did).")
    attempts: int
    jobId: int | None
    outputs: dict[str, Any] | None = Field(description="Stack outputs after a successful up.")
    outputTail: str = Field(description="The last characters of the engine output.")
    createdAt: datetime
    startedAt: datetime | None
    updatedAt: datetime
    finishedAt: datetime | None


class ManagedByOut(BaseModel):
    kind: Manager = Field(
        description="Who manages the server: the source of its last `up` (`http`: this API, "
        "`gitops`: `citrus-deploy gitops apply`), or `manual` for a servers row made by hand with "
        "`pulumi up`."
    )
    repository: str | None = Field(
        None, description="For `gitops`: the repository whose fleet folder holds its file."
    )


class GitOpsOut(BaseModel):
    state: GitOpsState = Field(
        description="Ready: applied and the agent is online. Reconciling: a deployment is "
        "queued or running, or the agent has yet to connect. Failed: the last deployment "
        "failed or the agent never came. Stalled: needs an operator."
    )
    lastAppliedCommit: str | None = Field(
        description="Commit of the last GitOps `up` that succeeded."
    )
    lastAttemptedCommit: str | None = Field(
        description="Commit of the last GitOps deployment, whatever its outcome."
    )


class ServerOut(BaseModel):
    id: str | None = Field(description="Droplet id; null until the droplet exists.")
    name: str
    status: ServerStatus
    agent: AgentOut
    region: str | None
    size: str | None
    ipv4Address: str | None
    createdAt: datetime | None
    currentDeployment: DeploymentOut | None = Field(
        description="The deployment queued or running now, if any."
    )
    lastDeployment: DeploymentOut | None = Field(description="The last finished deployment.")
    managedBy: ManagedByOut | None = Field(
        None, description="Who manages the server; null for a name nobody holds any more."
    )
    gitops: GitOpsOut | None = Field(None, description="For a GitOps server: its state.")
    bootSteps: list[boot_reports.BootStepOut] = Field(
        default_factory=list, description="What its boot script reported (bootReportUrl)."
    )
    bootStoppedAt: str | None = Field(
        default=None, description="For an agent the stale check failed: where its boot stopped."
    )


class DeployFinished(BaseModel):
    """?wait=true, deployment finished: success says whether it succeeded."""

    success: bool
    message: str
    server: ServerOut


class ServerSummaryOut(BaseModel):
    id: str | None
    name: str
    status: ServerStatus
    ipv4Address: str | None
    agent: AgentOut
    deploymentId: int | None
    deploymentKind: Kind | None
    deploymentState: DeploymentState | None
    deploymentError: str | None
    managedBy: ManagedByOut | None = None
    gitops: GitOpsOut | None = None


class ServerList(BaseModel):
    servers: list[ServerSummaryOut]


class DestroyAccepted(BaseModel):
    success: bool
    message: str
    deployment: DeploymentOut


def deployment_out(dep: Deployment) -> DeploymentOut:
    return DeploymentOut(
        id=dep.id,
        kind=dep.kind,
        state=dep.state,
        error=dep.error,
        attempts=dep.attempts,
        jobId=dep.job_id,
        outputs=dep.outputs,
        outputTail=dep.output_tail,
        createdAt=dep.created_at,
        startedAt=dep.started_at,
        updatedAt=dep.updated_at,
        finishedAt=dep.finished_at,
    )


def server_out(server: Server) -> ServerOut:
    return ServerOut(
        id=server.droplet_id,
        name=server.name,
        status=server.status,
        agent=AgentOut(
            id=server.agent_id,
            name=server.agent_name,
            status=server.agent_status,
        ),
        region=server.region,
        size=server.size,
        ipv4Address=server.ipv4_address,
        createdAt=server.created_at,
        currentDeployment=deployment_out(server.current) if server.current else None,
        lastDeployment=deployment_out(server.last) if server.last else None,
        managedBy=managed_by_out(server.managed_by),
        gitops=gitops_out(server.gitops),
    )


def managed_by_out(managed_by: ManagedBy | None) -> ManagedByOut | None:
    if managed_by is None:
        return None
    return ManagedByOut(
        kind=managed_by.kind,
        repository=managed_by.repository,
    )


def gitops_out(status: GitOpsStatus | None) -> GitOpsOut | None:
    if status is None:
        return None
    return GitOpsOut(
        state=status.state,
        lastAppliedCommit=status.last_applied_commit,
        lastAttemptedCommit=status.last_attempted_commit,
    )


# -- the queue's room --------------------------------------------------------------------------


class QueueRoom:
    """Refuses a new deployment (QueueFull: 503, nothing changed) while CITRUS_MAX_QUEUED
    deployments are queued or running. One per app (app.state.queue_room).

    Requests in flight at the same moment can each still see room, so the cap can be passed
    by as many as arrive together; it bounds a flood, it is not a quota. So a count under 90%
    of the cap is reused for a second: an accepted POST stays one round trip.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.at = float("-inf")  # when the last count was taken
        self.count = 0

    async def check(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        cap = self.cap
        if cap == 0:
            return
        now = asyncio.get_running_loop().time()
        if now - self.at < ROOM_FRESH_SECONDS and self.count + 1 < 0.9 * cap:
            self.count += 1  # this request's deployment, as far as this process knows
            return
        async with pool.connection() as conn:
            cur = await conn.execute(queries.load()["count_active_deployments"], {"cap": cap})
            row = await cur.fetchone()
        self.at, self.count = now, (row[0] if row is not None else 0) + 1
        if row is not None and row[0] >= cap:
            raise QueueFull(
                f"{cap} deployments are queued or running (CITRUS_MAX_QUEUED); nothing was "
                f"changed, retry in {QUEUE_RETRY_AFTER} s"
            )


def install_queue_room(app: FastAPI, settings: Settings) -> None:
    app.state.queue_room = QueueRoom(settings.max_queued)


async def get_queue_room(request: Request) -> QueueRoom:
    room: QueueRoom = request.app.state.queue_room
    return room


Room = Annotated[QueueRoom, Depends(get_queue_room)]

# -- the routes --------------------------------------------------------------------------------

router = APIRouter(prefix="/admin", dependencies=[Depends(authenticated)])


@router.post(
    "/servers/deploy-with-agent",
    status_code=202,
    response_model=DeployAccepted,
    responses={
        200: {"model": DeployFinished, "description": "?wait=true and it finished."},
        202: {
            "model": DeployAccepted,
            "description": "Queued (or still running after the wait). Location: the server.",
        },
        **responses(400, 401, 408, 409, 413, 422, 429, 503),
    },
    summary="Deploy a new server with its agent",
)
async def deploy_with_agent(
    pool: Pool,
    settings: AppSettings,
    room: Room,
    body: DeployRequest | None = None,
    wait: Annotated[
        bool, Query(description="Wait (bounded) for the deployment to finish.")
    ] = False,
    timeout: Annotated[
        float | None,
        Query(gt=0, le=3600, description="Seconds to wait; capped by the service."),
    ] = None,
) -> JSONResponse:
    name = body.name if body and body.name else None
    await room.check(pool)
    dep = await deployments.enqueue_up(
        pool, name, region=body.region if body else None, size=body.size if body else None
    )
    location = {"Location": f"/admin/servers/{dep.server_name}"}
    if wait:
        limit = min(timeout or settings.wait_max_seconds, settings.wait_max_seconds)
        # From here on the deployment is stored and queued: whatever cuts the wait short
        # (the database restarting, ...) the answer is the 202 below. An error answer would
        # read "nothing was changed", and its retry would queue a second server.
        try:
            dep = await records.wait_until_finished(pool, dep.id, limit)
            if dep.finished:
                server = await servers.get_server(
                    pool, dep.server_name, tail=settings.output_tail_chars
                )
                ok = dep.state == "succeeded"
                message = (
                    "Server with agent deployed" if ok else f"Server deployment failed: {dep.error}"
                )
                finished = DeployFinished(success=ok, message=message, server=server_out(server))
                return JSONResponse(finished.model_dump(mode="json"), headers=location)
        except DB_DOWN as exc:
            log.warning(
                "deployment %s queued; its wait ended early, database unreachable (%s)",
                dep.id,
                type(exc).__name__,
            )
        except Exception:
            log.exception("deployment %s queued; its wait ended early", dep.id)
    accepted = DeployAccepted(
        success=True,
        message=STARTED_MESSAGE,
        server=ServerRef(
            id=None, name=dep.server_name, status="provisioning", agent=AgentRef(id=None)
        ),
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=location)


@router.get(
    "/servers",
    response_model=ServerList,
    responses=responses(401, 422, 429, 503),
    summary="List servers with their status and last deployment",
)
async def list_servers(
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ServerList:
    found = await servers.list_servers(pool, limit=limit, offset=offset)
    return ServerList(
        servers=[
            ServerSummaryOut(
                id=s.droplet_id,
                name=s.name,
                status=s.status,
                ipv4Address=s.ipv4_address,
                agent=AgentOut(
                    id=s.agent_id,
                    name=s.agent_name,
                    status=s.agent_status,
                ),
                deploymentId=s.deployment_id,
                deploymentKind=s.deployment_kind,
                deploymentState=s.deployment_state,
                deploymentError=s.deployment_error,
                managedBy=managed_by_out(s.managed_by),
                gitops=gitops_out(s.gitops),
            )
            for s in found
        ]
    )


@router.get(
    "/servers/{name}",
    response_model=ServerOut,
    responses=responses(401, 404, 422, 429, 503),
    summary="One server: rows, status, IP, current and last deployment with output tail",
)
async def get_server(pool: Pool, settings: AppSettings, name: ServerName) -> ServerOut:
    server = await servers.get_server(pool, name, tail=settings.output_tail_chars)
    steps = await boot_reports.steps_of(pool, server.agent_id)
    stopped = boot_reports.stopped_at(steps) if server.agent_status == "failed" else None
    return server_out(server).model_copy(update={"bootSteps": steps, "bootStoppedAt": stopped})


@router.delete(
    "/servers/{name}",
    status_code=202,
    response_model=DestroyAccepted,
    responses={
        202: {"description": "Destroy queued. Location: the deployment."},
        **responses(401, 404, 409, 422, 429, 503),
    },
    summary="Destroy the server's stack and its rows",
)
async def delete_server(pool: Pool, room: Room, name: ServerName) -> JSONResponse:
    await room.check(pool)
    dep = await servers.enqueue_destroy(pool, name)
    body = DestroyAccepted(success=True, message=DESTROY_MESSAGE, deployment=deployment_out(dep))
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/admin/deployments/{dep.id}"},
    )


@router.get(
    "/deployments/{deployment_id}",
    response_model=DeploymentOut,
    responses=responses(401, 404, 422, 429, 503),
    summary="One deployment with the tail of its output",
)
async def get_deployment(
    pool: Pool,
    settings: AppSettings,
    deployment_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
) -> DeploymentOut:
    dep = await records.get_deployment(pool, deployment_id, tail=settings.output_tail_chars)
    return deployment_out(dep)
