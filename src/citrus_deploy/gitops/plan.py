"""The plan: what `apply` would do to each server, from the fleet folder and the service's record.

`make_plan` is pure (no database, no Git): the CLI gathers the fleet, the deployed state, the
commit and the program hash, and tests and the benchmark call it with their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from citrus_deploy.gitops.fleet import Fleet, StackFile
from citrus_deploy.program.component import REPLACE_KEYS
from citrus_deploy.program.config import project_defaults
from citrus_deploy.store.ownership import Deployed

PLAN_VERSION = 1
ACTIONS = ("create", "update", "replace", "destroy", "unchanged", "error")
CHANGED = frozenset({"create", "update", "replace"})
# These change the boot script (user_data), which replaces the droplet only for a stack that
# opted in with replaceOnBootScriptChange; otherwise the droplet ignores a user_data change.
BOOT_SCRIPT_KEYS = frozenset({"engineWsUrl", "agentRepoUrl", "agentRepoRef", "bootReportUrl"})
_NAME_KEYS = frozenset({"serverName", "agentName"})


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    forces_replace: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "old": self.old,
            "new": self.new,
            "forcesReplace": self.forces_replace,
        }


@dataclass
class ServerPlan:
    """One server's line of the plan."""

    name: str
    action: str
    file: str | None
    config: dict[str, Any] | None  # the record config apply will deploy (destroy: the applied one)
    managed_by: str | None
    changes: list[Change] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    adopt: bool = False
    prune: bool = False
    preview: dict[str, Any] | None = None  # the engine's preview, with `plan --preview`
    engine_replace: bool = False  # the preview replaces a resource the plan only updates

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "action": self.action,
            "file": self.file,
            "config": self.config,
            "managedBy": self.managed_by,
            "changes": [c.to_json() for c in self.changes],
            "reasons": self.reasons,
            "errors": self.errors,
            "adopt": self.adopt,
            "prune": self.prune,
        }
        if self.preview is not None:
            entry["preview"] = self.preview
        if self.engine_replace:
            entry["engineReplace"] = True
        return entry

    def take_preview(self, preview: dict[str, Any]) -> None:
        """Records the engine's preview; where the engine replaces what the plan's own rules
        only update (a provider's force-new field, a program change), the engine's word wins:
        the server is a replace, which the blast-radius guard counts."""
        self.preview = preview
        replaced = [
            step["urn"].rsplit("::", 1)[-1]
            for step in preview.get("steps") or []
            if step.get("op") == "replace"
        ]
        if self.action == "update" and replaced:
            self.action, self.engine_replace = "replace", True
            self.reasons.append(f"the engine's preview replaces {', '.join(sorted(replaced))}")


@dataclass
class Plan:
    repository: str
    commit: str
    fleet: str
    program_hash: str
    servers: list[ServerPlan]
    errors: list[str] = field(default_factory=list)  # errors that belong to no server

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(ACTIONS, 0)
        for server in self.servers:
            counts[server.action] += 1
        counts["error"] += len(self.errors)
        return counts

    @property
    def has_errors(self) -> bool:
        return bool(self.errors) or any(s.action == "error" for s in self.servers)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "repository": self.repository,
            "commit": self.commit,
            "fleet": self.fleet,
            "programHash": self.program_hash,
            "summary": self.summary(),
            "errors": sorted(self.errors),
            "servers": [s.to_json() for s in sorted(self.servers, key=lambda s: s.name)],
        }


def forces_replace(key: str, new_config: Mapping[str, Any]) -> bool:
    """Whether changing `key` replaces the droplet, for a server whose new config is this."""
    if key in REPLACE_KEYS:
        return True
    return key in BOOT_SCRIPT_KEYS and _truthy(
        _effective(new_config, "replaceOnBootScriptChange", project_defaults())
    )


def make_plan(
    fleet: Fleet,
    deployed: Mapping[str, Deployed],
    *,
    repository: str,
    commit: str,
    program_hash: str,
) -> Plan:
    """Compares every file with what is deployed; `deployed` is keyed by name.lower()."""
    defaults = project_defaults()
    servers: list[ServerPlan] = []
    named = set()
    for stack in fleet.files.values():
        named.add(stack.name.lower())
        servers.append(
            _plan_file(stack, deployed.get(stack.name.lower()), repository, program_hash, defaults)
        )
    for key, d in deployed.items():
        if key not in named and d.managed_by == "gitops" and d.repository == repository:
            servers.append(
                ServerPlan(
                    name=d.name,
                    action="destroy",
                    file=None,
                    config=d.applied_config,
                    managed_by=d.managed_by,
                    reasons=[f"no file Pulumi.{d.name}.yaml in {fleet.display}"],
                    prune=True,
                )
            )
    _note_renames(servers, defaults)
    servers.sort(key=lambda s: s.name)
    return Plan(
        repository=repository,
        commit=commit,
        fleet=fleet.display,
        program_hash=program_hash,
        servers=servers,
        errors=sorted(str(e) for e in fleet.errors),
    )


def _plan_file(
    stack: StackFile,
    d: Deployed | None,
    repository: str,
    program_hash: str,
    defaults: Mapping[str, Any],
) -> ServerPlan:
    managed_by = d.managed_by if d is not None else None
    plan = ServerPlan(
        name=stack.name,
        action="create",
        file=stack.path,
        config=stack.config,
        managed_by=managed_by,
        adopt=stack.adopt,
    )
    if stack.errors:
        plan.action = "error"
        plan.errors = [str(e) for e in stack.errors]
        return plan
    if d is None or managed_by is None:
        return plan
    if d.active:
        plan.reasons.append("a deployment of this server is queued or running now")
    if d.name != stack.name:
        return _error(
            plan,
            f"the server is deployed as {d.name!r}; name the file Pulumi.{d.name}.yaml "
            "(server names differ only in case, stack names do not)",
        )
    ours = managed_by == "gitops" and d.repository == repository
    if not ours:
        owner = managed_by if managed_by != "gitops" else f"gitops of {d.repository}"
        if not stack.adopt:
            return _error(
                plan,
                f"managed by {owner}; add `gitops:adopt: true` to the file to take it over",
            )
        if d.applied_config is not None:
            _compare(plan, d.applied_config, stack.config, defaults)
        else:
            # Made over HTTP or by hand: the servers row is all we know of its settings.
            known = {"region": d.region, "size": d.size}
            known = {key: value for key, value in known.items() if value is not None}
            _compare(plan, known, stack.config, defaults, only=set(known))
        plan.reasons.insert(0, f"adopts a server managed by {owner}")
        if plan.action == "unchanged":
            plan.action = "update"
        return plan
    if d.applied_config is None:
        plan.action = "create" if d.server_status is None else "update"
        plan.reasons.append(
            "no successful GitOps apply of this server yet"
            + (f" (last attempt: commit {d.attempted_commit[:12]})" if d.attempted_commit else "")
        )
        return plan
    _compare(plan, d.applied_config, stack.config, defaults)
    if d.applied_program != program_hash:
        old = (d.applied_program or "unknown")[:12]
        plan.reasons.append(f"program changed ({old} -> {program_hash[:12]})")
        if plan.action == "unchanged":
            plan.action = "update"
    if plan.action == "unchanged" and d.last_state in ("failed", "needs_operator"):
        plan.action = "update"
        plan.reasons.append(f"the last deployment {d.last_state.replace('_', ' ')}")
    return plan


def _error(plan: ServerPlan, message: str) -> ServerPlan:
    plan.action = "error"
    plan.errors.append(message)
    return plan


def _compare(
    plan: ServerPlan,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    defaults: Mapping[str, Any],
    only: set[str] | None = None,
) -> None:
    if only is None and old == new:  # most of a fleet, most of the time: nothing to compare
        plan.action = "unchanged"
        return
    keys = sorted(only if only is not None else set(old) | set(new))
    for key in keys:
        before = _effective(old, key, defaults)
        after = _effective(new, key, defaults)
        if before != after and _canonical(before) != _canonical(after):
            plan.changes.append(Change(key, before, after, forces_replace(key, new)))
    forced = [c.key for c in plan.changes if c.forces_replace]
    if forced:
        plan.action = "replace"
        plan.reasons.append(f"{', '.join(forced)} cannot change in place: a new droplet")
    else:
        plan.action = "update" if plan.changes else "unchanged"


def _effective(config: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    """The value the program uses: the config's, else Pulumi.yaml's default."""
    value = config.get(key)
    if value is not None and value != "":
        return value
    if key == "agentName" and config.get("serverName"):
        return f"agent-{config['serverName']}"
    return defaults.get(key)


def _canonical(value: Any) -> str | None:
    """A value as the Pulumi CLI hands it to the program: "true" and true are the same."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _note_renames(servers: list[ServerPlan], defaults: Mapping[str, Any]) -> None:
    """A removed and an added file with the same settings: say it is a rename (destroy+create)."""
    destroyed: dict[str, list[ServerPlan]] = {}
    for server in servers:
        if server.action == "destroy" and server.config is not None:
            destroyed.setdefault(_settings(server.config, defaults), []).append(server)
    if not destroyed:
        return
    for server in servers:
        if server.action != "create" or server.config is None:
            continue
        for old in destroyed.get(_settings(server.config, defaults), []):
            server.reasons.append(
                f"same settings as the removed {old.name}: a renamed file destroys {old.name} "
                f"and creates {server.name} (the file name is the server name)"
            )
            old.reasons.append(f"same settings as the new {server.name}: a rename?")


def _settings(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    keys = (set(config) | set(defaults)) - _NAME_KEYS
    return json.dumps({k: _canonical(_effective(config, k, defaults)) for k in sorted(keys)})
