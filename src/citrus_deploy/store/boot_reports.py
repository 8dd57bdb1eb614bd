"""The boot reports' verdicts: where a droplet's boot stopped, in words an operator reads, and
the stale check's record of it for every agent it fails (one statement for all)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from citrus_deploy.store import queries

Step = Literal[
    "start", "packages", "user", "fetch", "env", "dependencies", "unit", "verify", "other"
]
# What an operator reads for each step (the script's own labels carry URLs and names).
STEP_NAMES = {
    "start": "start",
    "packages": "install packages",
    "user": "create user",
    "fetch": "fetch agent",
    "env": "write .env",
    "dependencies": "install agent dependencies",
    "unit": "install unit",
    "verify": "verify unit",
}


@dataclass(frozen=True)
class LastReport:
    """A failed agent and its last boot report (all None when none arrived)."""

    agent_id: uuid.UUID
    step: str | None
    label: str | None
    event: str | None
    tail: str | None


async def record_stale(
    conn: psycopg.AsyncConnection[Any], failed: list[LastReport], timeout_seconds: float
) -> None:
    """For each agent the stale check just failed: a `stale` step saying where its boot stopped
    ("no agent after 600 s; boot stopped at 'fetch agent': HTTP 403 from the repository").
    One statement for all of them, in the caller's transaction (the one that failed them); at
    most one per agent (boot_steps_one_stale)."""
    if not failed:
        return
    labels: dict[str, int] = {}  # each distinct verdict -> its 1-based index in the array sent
    of_report: dict[tuple[str | None, ...], int] = {}  # many agents share their last report
    label_of = []
    for last in failed:
        report = (last.step, last.label, last.event, last.tail)
        index = of_report.get(report)
        if index is None:
            said = verdict(timeout_seconds, vars(last))
            index = of_report[report] = labels.setdefault(said, len(labels) + 1)
        label_of.append(index)
    await conn.execute(
        queries.load()["insert_stale_boot_steps"],
        {
            "agent_ids": [last.agent_id for last in failed],
            "steps": [last.step or "other" for last in failed],
            "labels": list(labels),
            "label_of": label_of,
        },
    )


def verdict(timeout_seconds: float, last: dict[str, Any]) -> str:
    """What the stale check says of an agent that never connected, from its last report."""
    head = f"no agent after {timeout_seconds:g} s"
    if last.get("event") is None:
        return (
            f"{head}; no boot report arrived (bootReportUrl unset, or the droplet never "
            "reached the service)"
        )
    name = STEP_NAMES.get(last["step"], last["label"])
    if last["event"] == "success":
        return f"{head}; the boot script succeeded, but the agent never connected to the hub"
    if last["event"] == "failure":
        return f"{head}; boot stopped at '{name}': {failure_reason(last['step'], last['tail'])}"
    return f"{head}; boot stopped at '{name}' (no outcome reported after it)"


def failure_reason(step: str, tail: str | None) -> str:
    """The line of the log's tail that explains a failure, in a few words where it is known."""
    lines = [line.strip() for line in (tail or "").splitlines() if line.strip()]
    text = "\n".join(lines)
    source = " from the repository" if step == "fetch" else ""
    if found := re.search(r"returned error: ([0-9]{3})", text):
        return f"HTTP {found.group(1)}{source}"
    if step == "fetch" and re.search(
        r"could not read Username|Authentication failed|terminal prompts disabled", text
    ):
        return "HTTP 401 from the repository (the token was refused)"
    explaining = [line for line in lines if "citrus-init: " not in line]  # not our own lines
    if explaining:
        return explaining[-1][:200]
    return "no detail in the log"
