"""What an operator must run when a killed update left a stack half done.

Pulumi's CLI finishes its in-flight steps and releases the stack's lock on SIGTERM; SIGKILL (or
a machine that dies) leaves the DIY backend's lock and the interrupted steps as pending
operations in the checkpoint. The next `up` only warns about a pending create and creates the
resource again: a second droplet, while the first keeps running with the same agent key. So the
service never retries such a stack by itself; it says what to check and run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from citrus_deploy.engine.deployer import DeployError


def _droplet_ids(pending: Iterable[Mapping[str, Any]]) -> list[str]:
    found = []
    for op in pending:
        resource = op.get("resource") or {}
        if str(resource.get("type", "")).startswith("digitalocean:index/droplet") and resource.get(
            "id"
        ):
            found.append(str(resource["id"]))
    return found


def _name(resource: Mapping[str, Any]) -> str:
    return str(resource.get("urn", "?")).rsplit("::", 1)[-1]


def repair_steps(
    stack: str, pending: Iterable[Mapping[str, Any]] = (), *, maybe_created: bool = False
) -> str:
    """The commands, in order, for a stack whose update was killed. `maybe_created`: the
    checkpoint was not read (the process died), so a create may have been under way."""
    lines = [
        f"1. `pulumi cancel --stack {stack} --yes` if no update of it is running (removes the "
        "lock a killed update left)",
    ]
    if maybe_created or any(op.get("type") == "creating" for op in pending):
        lines.append(
            "2. check DigitalOcean for a droplet the killed update created but did not record "
            f"(name {stack!r}); if there is one, import it or delete it by hand"
        )
    lines.append(
        f"{len(lines) + 1}. `pulumi refresh --stack {stack} --clear-pending-creates --yes` (reads "
        "the real state and drops the interrupted operations)"
    )
    lines.append(f"{len(lines) + 1}. deploy again (POST, or `pulumi up --stack {stack}`)")
    return "\n".join(lines)


def pending_operations_error(stack: str, pending: list[Mapping[str, Any]]) -> DeployError:
    described = ", ".join(
        f"{op.get('type', '?')} {_name(op.get('resource') or {})}" for op in pending
    )
    ids = _droplet_ids(pending)
    known = f"; droplet {', '.join(ids)}" if ids else ""
    return DeployError(
        f"stack {stack} holds {len(pending)} pending operation(s) of a killed update "
        f"({described}{known}); an `up` now could create a second droplet",
        repair=repair_steps(stack, pending),
    )
