"""The deployer seam without the engine: the child-process protocol and event lines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import DeployError, StackValue, looks_transient
from citrus_deploy.engine.events import describe_event
from citrus_deploy.engine.stack_config import deployer_options, stack_config
from citrus_deploy.standin.engine import Engine
from tests.service.conftest import make_settings, rows


def test_a_child_that_fails_reports_the_program_error(tmp_path: Path) -> None:
    options = {
        "deployer": "test-engine",
        "backend_url": f"file://{tmp_path}",
        "step_delay": 0,
        "passphrase": "child-test-passphrase",
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    # No databaseUrl and a bad region: the program's own rules stop it.
    config: dict = {}
    with pytest.raises(DeployError, match="invalid configuration") as raised:
        asyncio.run(run_in_child("up", "bad_name", config, options, record))
    assert raised.value.transient is False


@pytest.mark.parametrize(
    ("text", "transient"),
    [
        ("error: the stack is currently locked by 1 lock(s)", False),
        ("lost the connection to PostgreSQL at x: server closed", True),
        (
            'error: unable to open state database "postgres://u@db:5432/s": failed to ping '
            "PostgreSQL: dial tcp db:5432: connect: connection refused",
            True,
        ),
        (
            "agent-server-droplet: Error creating droplet: POST https://api.digitalocean.com/v2/"
            'droplets: 429 (request "a1b2") Too many requests',
            True,
        ),
        (
            "agent-server-droplet: Error creating droplet: POST https://api.digitalocean.com/v2/"
            'droplets: 422 (request "a1b2") Region is not available',
            False,
        ),
        ("invalid configuration (1 field(s))", False),
    ],
)
def test_transient_errors_are_told_apart(text: str, transient: bool) -> None:
    assert looks_transient(text) is transient


def test_engine_events_become_lines() -> None:
    from pulumi.automation import events

    failed = events.EngineEvent(
        sequence=1,
        timestamp=0,
        res_op_failed_event=events.ResOpFailedEvent(
            metadata=events.StepEventMetadata(
                op=events.OpType.CREATE,
                urn="urn:x",
                type="t",
                provider="p",
            ),
            status=1,
            steps=1,
        ),
    )
    assert describe_event(failed) == "[event] failed: create urn:x"


def test_each_engine_step_is_a_line_of_its_own(service_db: str, tmp_path: Path) -> None:
    """The engine stand-in registers resources from several threads; their lines must not mix."""
    settings = make_settings(service_db, tmp_path)
    config = {
        key: StackValue(value, secret)
        for key, (value, secret) in stack_config(settings, {"serverName": "lines-1"}).items()
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    for _ in range(5):
        asyncio.run(run_in_child("up", "lines-1", config, deployer_options(settings), record))
        asyncio.run(run_in_child("destroy", "lines-1", config, deployer_options(settings), record))

    steps = [line for line in lines if line.startswith((" +  ", " -  "))]
    assert len(steps) == 5 * (8 + 8), lines  # 8 resources created, then 8 deleted, 5 times
    assert [line for line in lines if not line.strip() or line.count("  ") > 1] == []


def _start_up(
    settings_options: dict[str, Any], config: dict[str, StackValue], lines: list[str]
) -> asyncio.Task[dict[str, Any]]:
    async def record(line: str) -> None:
        lines.append(line)

    return asyncio.ensure_future(run_in_child("up", "stop-1", config, settings_options, record))


async def _when(lines: list[str], text: str) -> None:
    while not any(text in line for line in lines):
        await asyncio.sleep(0.05)


def _stand_in(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "test-engine")


def test_a_stopped_deployment_finishes_its_step_and_releases_the_stack(
    service_db: str, tmp_path: Path
) -> None:
    """SIGTERM, as the CLI expects: the step in flight completes, nothing is left pending."""
    settings = make_settings(service_db, tmp_path, CITRUS_TEST_ENGINE_STEP_DELAY="0.4")
    config = _config(settings, "stop-1")
    options = {**deployer_options(settings), "stop_grace": 30}
    lines: list[str] = []

    async def stop_then_deploy_again() -> dict[str, Any]:
        task = _start_up(options, config, lines)
        await _when(lines, "RandomBytes agent-server-agent-key created")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await run_in_child("up", "stop-1", config, options, _ignore)

    outputs = asyncio.run(stop_then_deploy_again())

    checkpoint = _stand_in(tmp_path).export("stop-1")
    assert checkpoint["pending_operations"] == []
    assert not _stand_in(tmp_path).locked("stop-1")
    assert outputs["serverName"] == "stop-1"
    assert rows(service_db, "SELECT count(*) FROM servers") == [(1,)]


def test_a_deployment_killed_after_its_grace_needs_an_operator(
    service_db: str, tmp_path: Path
) -> None:
    """Past the grace the child is killed: its pending create and lock stay, and the next `up`
    refuses (it would create a second droplet) and says what to run."""
    settings = make_settings(service_db, tmp_path, CITRUS_TEST_ENGINE_STEP_DELAY="3")
    config = _config(settings, "stop-1")
    options = {**deployer_options(settings), "stop_grace": 0.5}
    lines: list[str] = []
    killed: list[DeployError] = []

    async def record_kill(exc: DeployError) -> None:
        killed.append(exc)

    async def kill_then_deploy_again() -> None:
        async def record(line: str) -> None:
            lines.append(line)

        task = asyncio.ensure_future(
            run_in_child("up", "stop-1", config, options, record, on_killed=record_kill)
        )
        # The component's step is done; the first slow create (3 s) has begun.
        await _when(lines, "AgentServer agent-server created")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(DeployError) as again:
            await run_in_child("up", "stop-1", config, options, _ignore)
        killed.append(again.value)

    asyncio.run(kill_then_deploy_again())

    (on_kill, refused) = killed
    assert on_kill.repair is not None
    assert "pulumi cancel --stack stop-1" in on_kill.repair
    assert "pending operation" in str(refused)
    assert refused.repair is not None
    assert "--clear-pending-creates" in refused.repair
    assert refused.transient is False
    assert _stand_in(tmp_path).export("stop-1")["pending_operations"] != []
    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]


async def _ignore(line: str) -> None:
    return None


def _config(settings: Any, name: str) -> dict[str, StackValue]:
    return {
        key: StackValue(value, secret)
        for key, (value, secret) in stack_config(settings, {"serverName": name}).items()
    }
