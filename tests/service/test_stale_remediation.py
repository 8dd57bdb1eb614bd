"""Remediation never destroys a server whose agent is online, not even one that connects while
remediation decides (the race between listing the candidates and queueing their destroys)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citrus_deploy.store import records
from tests.service.conftest import rows
from tests.service.test_stale import add, check_and_remediate, hub_connects, states


def test_remediation_leaves_a_failed_server_whose_agent_is_online(
    service_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(service_db) as conn:
        add(conn, "stale-1", agent="offline", age_minutes=11)
        add(conn, "deploy-broke", agent="online", age_minutes=11, server="failed")

    queued = asyncio.run(check_and_remediate(service_db, tmp_path))

    assert queued == ["stale-1"]


def test_an_agent_online_between_selection_and_enqueue_is_not_destroyed(
    service_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(service_db) as conn:
        add(conn, "slow-1", agent="offline", age_minutes=11)
    selected: list[str] = []
    select = records.failed_servers_without_deployment

    async def then_the_agent_connects(*args: Any, **kwargs: Any) -> Sequence[str]:
        selected.extend(await select(*args, **kwargs))
        hub_connects(service_db, "slow-1")
        return selected

    monkeypatch.setattr(records, "failed_servers_without_deployment", then_the_agent_connects)

    queued = asyncio.run(check_and_remediate(service_db, tmp_path))

    assert (selected, queued) == (["slow-1"], [])
    assert rows(service_db, "SELECT count(*) FROM deployments WHERE kind = 'destroy'") == [(0,)]


def test_an_agent_going_online_while_the_destroy_is_decided_is_not_destroyed(
    service_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's UPDATE is in flight (not committed) when remediation decides: the decision
    waits for it and sees the agent online. A decision on the snapshot alone would queue the
    destroy, and the hub would commit 'online' a moment later."""
    with psycopg.connect(service_db) as conn:
        add(conn, "slow-1", agent="offline", age_minutes=11)
    hub = psycopg.connect(service_db)
    commit = threading.Timer(1.0, hub.commit)
    select = records.failed_servers_without_deployment

    async def while_the_hub_is_updating(*args: Any, **kwargs: Any) -> Sequence[str]:
        found = await select(*args, **kwargs)
        hub.execute("UPDATE agents SET status = 'online' WHERE name = 'agent-slow-1'")
        commit.start()
        return found

    monkeypatch.setattr(records, "failed_servers_without_deployment", while_the_hub_is_updating)
    try:
        started = time.monotonic()
        queued = asyncio.run(check_and_remediate(service_db, tmp_path))
        waited = time.monotonic() - started
    finally:
        commit.join()
        hub.close()

    assert queued == []
    assert waited >= 0.9  # it waited for the hub's transaction
    assert rows(service_db, "SELECT count(*) FROM deployments WHERE kind = 'destroy'") == [(0,)]
    assert states(service_db)["slow-1"] == ("online", "failed")  # the next check makes it active
