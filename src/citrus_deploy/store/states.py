"""The names of every state the store keeps, once: the types the API and the console show and
the tuples the code tests against are made from the same Literals."""

from __future__ import annotations

from typing import Literal, get_args

Kind = Literal["up", "destroy"]
DeploymentState = Literal["queued", "running", "succeeded", "failed", "needs_operator"]
ServerStatus = Literal["provisioning", "active", "failed", "destroying", "needs_operator"]
AgentStatus = Literal["offline", "online", "failed"]
Manager = Literal["http", "gitops", "manual"]
GitOpsState = Literal["Ready", "Reconciling", "Failed", "Stalled"]
ApplyOutcome = Literal["succeeded", "failed", "stopped"]
CheckKind = Literal["preview", "refresh"]
CheckState = Literal["queued", "running", "succeeded", "failed"]

KINDS: tuple[Kind, ...] = get_args(Kind)
DEPLOYMENT_STATES: tuple[DeploymentState, ...] = get_args(DeploymentState)
ACTIVE: tuple[DeploymentState, ...] = ("queued", "running")
FINISHED: tuple[DeploymentState, ...] = ("succeeded", "failed", "needs_operator")
SERVER_STATUSES: tuple[ServerStatus, ...] = get_args(ServerStatus)
AGENT_STATUSES: tuple[AgentStatus, ...] = get_args(AgentStatus)
MANAGERS: tuple[Manager, ...] = get_args(Manager)
GITOPS_STATES: tuple[GitOpsState, ...] = get_args(GitOpsState)
APPLY_OUTCOMES: tuple[ApplyOutcome, ...] = get_args(ApplyOutcome)
CHECK_KINDS: tuple[CheckKind, ...] = get_args(CheckKind)
CHECK_FINISHED: tuple[CheckState, ...] = ("succeeded", "failed")
