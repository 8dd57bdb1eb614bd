"""The deployer seam without the engine: the child-process protocol and event lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.automation import describe_event
from service.child import run_in_child
from service.deployer import DeployError, StackValue, looks_transient
from tests.service.conftest import make_settings


def test_a_child_that_fails_reports_the_program_error(tmp_path: Path) -> None:
    options = {
        "deployer": "test-engine",
        "backend_url": f"file://{tmp_path}",
        "step_delay": 0,
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
        ("error: the stack is currently locked by 1 lock(s)", True),
        ("lost the connection to PostgreSQL at x: server closed", True),
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
    """The test engine registers resources from several threads; their lines must not mix."""
    settings = make_settings(service_db, tmp_path)
    config = {
        key: StackValue(value, secret)
        for key, (value, secret) in settings.stack_config({"serverName": "lines-1"}).items()
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    for _ in range(5):
        asyncio.run(run_in_child("up", "lines-1", config, settings.deployer_options(), record))
        asyncio.run(run_in_child("destroy", "lines-1", config, settings.deployer_options(), record))

    steps = [line for line in lines if line.startswith((" +  ", " -  "))]
    assert len(steps) == 5 * (2 * 7 + 7), lines
    assert [line for line in lines if not line.strip() or line.count("  ") > 1] == []
