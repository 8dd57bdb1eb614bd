"""The real boot: config -> program -> user_data -> Debian 12, systemd, cloud-init -> online.

The program runs under citrus_deploy.standin.engine (the stand-in for the Pulumi engine and
DigitalOcean) and writes its rows to the test PostgreSQL; the droplet's `user_data` it produced
is booted with a NoCloud seed in a systemd-nspawn container (tests/boot/runner.py). At the
boundary: a Git server that serves the stand-in agent only to the right token, and a hub double
that checks id and key against `agents` and sets the row 'online' (tests/boot/standins).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest

from citrus_deploy.queue import stale
from citrus_deploy.standin.engine import Engine, stack_config
from citrus_deploy.standin.wire import reveal
from tests.boot import timings
from tests.boot.old_script import render_old_script
from tests.boot.runner import BootResult, Machine
from tests.boot.standins.gitserver import GitServer
from tests.boot.standins.hub import Hub
from tests.boot.standins.reports import ReportService
from tests.paths import REPO

pytestmark = pytest.mark.boot

AGENT_DIR = "/opt/citrus-agent"
ENV = f"{AGENT_DIR}/.env"
UNIT_FILE = "/etc/systemd/system/citrus-agent.service"
DROPLET = "digitalocean:index/droplet:Droplet"
AGENT_ROW = "pulumi-python:dynamic/citrus:AgentRow"


@dataclass(frozen=True)
class Deployment:
    """What `pulumi up` left: the agent's credentials and the droplet's user_data."""

    agent_id: str
    key: str
    engine_ws_url: str
    user_data: str

    def env_bytes(self) -> bytes:
        return (
            f"AGENT_ID={self.agent_id}\nAGENT_KEY={self.key}\nENGINE_WS_URL={self.engine_ws_url}\n"
        ).encode()


@pytest.fixture(scope="module")
def token() -> str:
    return "ghp_" + secrets.token_hex(18)


@pytest.fixture(scope="module")
def git(token: str) -> Iterator[GitServer]:
    with GitServer(token, tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def hub(boot_pg_conninfo: str) -> Iterator[Hub]:
    with Hub(boot_pg_conninfo) as h:
        yield h


@pytest.fixture(scope="module")
def reports(boot_pg_conninfo: str) -> Iterator[ReportService]:
    """The service's boot report endpoint (the real route) on 127.0.0.1."""
    with ReportService(boot_pg_conninfo) as service:
        yield service


@pytest.fixture(scope="module")
def deploy(
    boot_pg_conninfo: str,
    git: GitServer,
    hub: Hub,
    token: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Deployment]:
    """Runs the program for a new stack and returns what the droplet would boot with."""

    def run(
        *,
        github_token: str = token,
        ws_path: str = "",
        repo_url: str | None = None,
        boot_report_url: str | None = None,
    ) -> Deployment:
        name = f"boot-{secrets.token_hex(4)}"
        config = stack_config(
            REPO / "Pulumi.dev.yaml",
            serverName=name,
            engineWsUrl=hub.url + ws_path,
            agentRepoUrl=repo_url or git.url,
            bootReportUrl=boot_report_url,
            agentRepoRef="main",
            githubToken=github_token,
            databaseUrl=boot_pg_conninfo,
            **{"digitalocean:token": "dop_v1_stand_in"},
        )
        state = tmp_path_factory.mktemp("state")
        result = Engine(state, passphrase="boot-test-passphrase").up(name, config)
        (droplet,) = result.by_type(DROPLET)
        (agent,) = result.by_type(AGENT_ROW)
        return Deployment(
            agent_id=agent.id,
            key=reveal(agent.inputs["key"]),
            engine_ws_url=hub.url + ws_path,
            user_data=reveal(droplet.inputs["userData"]),
        )

    return run


def status_of(conninfo: str, agent_id: str) -> str:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT status FROM agents WHERE id = %s", (agent_id,)).fetchone()
    assert row is not None
    return str(row[0])


def reported(conninfo: str, agent_id: str) -> list[tuple[str, str, int | None, str | None]]:
    """The boot steps the service recorded for the agent: (step, event, exit code, tail)."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT step, event, exit_code, tail FROM boot_steps WHERE agent_id = %s ORDER BY id",
            (agent_id,),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def boot(machine: Machine, git: GitServer, conninfo: str, dep: Deployment) -> BootResult:
    machine.trust_ca(git.ca_pem)
    return machine.boot(
        dep.user_data,
        timeout=300,
        settle=lambda: status_of(conninfo, dep.agent_id) == "online",
        settle_timeout=30,
    )


# -- the assertions, shared with the old script's run below, which must fail them -------------


def assert_booted_clean(result: BootResult) -> None:
    assert result.cloud_init_done, result.tails()
    assert result.errors == [], result.tails()
    assert (
        result.citrus_init_log.splitlines()[-1].split(" ", 1)[1].startswith("citrus-init: SUCCESS")
    ), result.tails()


def assert_env_in_place(machine: Machine, dep: Deployment) -> None:
    env = machine.stat(ENV)
    assert env is not None, f"no {ENV}"
    assert env.data == dep.env_bytes()
    assert env.mode == 0o600
    assert (env.owner, env.group) == ("citrus-agent", "citrus-agent")


def assert_no_token_leak(machine: Machine, result: BootResult, token: str) -> None:
    places = {
        ".git/config": machine.read_text(f"{AGENT_DIR}/.git/config"),
        "citrus-init.log": machine.read_text("/var/log/citrus-init.log"),
        "cloud-init-output.log": machine.read_text("/var/log/cloud-init-output.log"),
        "unit journal": result.unit_journal,
        "journal": result.journal,
    }
    leaks = [where for where, text in places.items() if token in text]
    assert leaks == [], f"token found in: {', '.join(leaks)}"


def assert_key_in_no_log(machine: Machine, result: BootResult, key: str) -> None:
    logs = {
        "citrus-init.log": machine.read_text("/var/log/citrus-init.log"),
        "cloud-init-output.log": machine.read_text("/var/log/cloud-init-output.log"),
        "cloud-init.log": machine.read_text("/var/log/cloud-init.log"),
        "journal": result.journal,
    }
    leaks = [where for where, text in logs.items() if key in text]
    assert leaks == [], f"key found in: {', '.join(leaks)}"


# -- one good boot on the warm image, asserted from several sides ------------------------------


@dataclass
class Booted:
    machine: Machine
    result: BootResult
    dep: Deployment


@pytest.fixture(scope="module")
def warm_boot(
    deploy: Callable[..., Deployment],
    git: GitServer,
    boot_pg_conninfo: str,
    reports: ReportService,
) -> Iterator[Booted]:
    dep = deploy(boot_report_url=reports.url)
    with Machine("warm") as machine:
        result = boot(machine, git, boot_pg_conninfo, dep)
        timings.record("ours, warm image", result)
        yield Booted(machine, result, dep)


def test_cloud_init_reports_done_without_errors(warm_boot: Booted) -> None:
    assert_booted_clean(warm_boot.result)


def test_the_unit_is_active(warm_boot: Booted) -> None:
    assert warm_boot.result.unit_active, warm_boot.result.tails()
    unit = warm_boot.machine.read_text(UNIT_FILE)
    assert "User=citrus-agent" in unit
    assert "Restart=always" in unit


def test_env_holds_exactly_the_three_values_for_the_service_user(warm_boot: Booted) -> None:
    assert_env_in_place(warm_boot.machine, warm_boot.dep)


def test_the_agent_row_is_online(warm_boot: Booted, boot_pg_conninfo: str, hub: Hub) -> None:
    assert status_of(boot_pg_conninfo, warm_boot.dep.agent_id) == "online"
    assert warm_boot.result.settled, warm_boot.result.tails()
    assert warm_boot.dep.agent_id in [e.agent_id for e in hub.authenticated]


def test_the_token_is_in_no_config_and_no_log(warm_boot: Booted, token: str) -> None:
    assert_no_token_leak(warm_boot.machine, warm_boot.result, token)


def test_the_key_is_in_no_log(warm_boot: Booted) -> None:
    assert_key_in_no_log(warm_boot.machine, warm_boot.result, warm_boot.dep.key)


def test_the_boot_reported_each_step_then_success(warm_boot: Booted, boot_pg_conninfo: str) -> None:
    """Every report reached the real endpoint, which recorded it only if its signature held."""
    steps = reported(boot_pg_conninfo, warm_boot.dep.agent_id)

    assert [(step, event) for step, event, _, _ in steps] == [
        ("start", "step"),
        ("packages", "step"),
        ("user", "step"),
        ("fetch", "step"),
        ("env", "step"),
        ("dependencies", "step"),
        ("unit", "step"),
        ("verify", "step"),
        ("verify", "success"),
    ], warm_boot.result.tails()
    assert steps[-1][2] == 0
    assert "boot report not delivered" not in warm_boot.result.citrus_init_log


# -- the same chain on a bare image, as a fresh droplet: installs git and Node.js itself ------


def test_bare_image_installs_what_it_needs_and_comes_online(
    deploy: Callable[..., Deployment], git: GitServer, boot_pg_conninfo: str
) -> None:
    dep = deploy()
    with Machine("bare") as machine:
        result = boot(machine, git, boot_pg_conninfo, dep)
        timings.record("ours, bare image", result)

        assert_booted_clean(result)
        assert result.settled, result.tails()
        assert_env_in_place(machine, dep)
        assert result.apt_installed > 0, "the bare image must install git and nodejs"


# -- failure and repetition --------------------------------------------------------------------


def test_a_wrong_token_fails_cleanly_and_leaves_nothing_half_made(
    deploy: Callable[..., Deployment],
    git: GitServer,
    boot_pg_conninfo: str,
    reports: ReportService,
) -> None:
    wrong = "ghp_" + secrets.token_hex(18)
    dep = deploy(github_token=wrong, boot_report_url=reports.url)
    refused_before = len(git.refused)
    with Machine("warm") as machine:
        machine.trust_ca(git.ca_pem)
        result = machine.boot(dep.user_data, timeout=120)

        last = result.citrus_init_log.splitlines()[-1]
        assert "citrus-init: FAILURE: step 'fetch agent" in last, result.tails()
        assert result.errors, "cloud-init must report the failed script"
        assert len(git.refused) > refused_before
        assert not machine.exists(AGENT_DIR)
        assert [p for p in machine.listdir("/opt") if "citrus" in p] == []
        assert not machine.exists(UNIT_FILE)
        assert not machine.exists(UNIT_FILE + ".new")
        assert status_of(boot_pg_conninfo, dep.agent_id) == "offline"

    # The service heard where it stopped, and why (git's line for the stand-in's 401).
    steps = reported(boot_pg_conninfo, dep.agent_id)
    assert [(step, event) for step, event, _, _ in steps][-2:] == [
        ("fetch", "step"),
        ("fetch", "failure"),
    ]
    _, _, exit_code, tail = steps[-1]
    assert exit_code == 128
    assert tail is not None
    assert "terminal prompts disabled" in tail
    assert "citrus-init: FAILURE: step 'fetch agent" in tail.splitlines()[-1]
    assert wrong not in tail
    assert dep.key not in tail


def test_a_refused_repository_is_reported_and_the_stale_check_names_it(
    deploy: Callable[..., Deployment], reports: ReportService, boot_pg_conninfo: str
) -> None:
    """A token without access (403), reported; ten minutes on, the stale check says where the
    boot stopped and why."""
    token = "ghp_" + secrets.token_hex(18)
    with GitServer("ghp_" + secrets.token_hex(18), tls=True, refusal_status=403) as denying:
        dep = deploy(github_token=token, repo_url=denying.url, boot_report_url=reports.url)
        with Machine("warm") as machine:
            machine.trust_ca(denying.ca_pem)
            result = machine.boot(dep.user_data, timeout=120)

    steps = reported(boot_pg_conninfo, dep.agent_id)
    assert steps[-1][:3] == ("fetch", "failure", 128), result.tails()
    assert "The requested URL returned error: 403" in (steps[-1][3] or "")

    with psycopg.connect(boot_pg_conninfo) as conn:
        conn.execute(
            "UPDATE agents SET created_at = now() - interval '11 minutes' WHERE id = %s",
            (dep.agent_id,),
        )

    async def check() -> None:
        async with await psycopg.AsyncConnection.connect(boot_pg_conninfo, autocommit=True) as c:
            await stale.check(c, 600)

    asyncio.run(check())
    with psycopg.connect(boot_pg_conninfo) as conn:
        said = conn.execute(
            "SELECT label FROM boot_steps WHERE agent_id = %s AND event = 'stale'",
            (dep.agent_id,),
        ).fetchall()
    assert status_of(boot_pg_conninfo, dep.agent_id) == "failed"
    assert said == [
        ("no agent after 600 s; boot stopped at 'fetch agent': HTTP 403 from the repository",)
    ]


def test_running_the_script_twice_leaves_one_working_agent(
    deploy: Callable[..., Deployment], git: GitServer, boot_pg_conninfo: str, hub: Hub
) -> None:
    dep = deploy()
    with Machine("warm") as machine:
        first = boot(machine, git, boot_pg_conninfo, dep)
        assert_booted_clean(first)
        logins = sum(e.agent_id == dep.agent_id for e in hub.authenticated)

        second = machine.boot(  # a new instance-id makes cloud-init run the script again
            dep.user_data,
            timeout=300,
            settle=lambda: sum(e.agent_id == dep.agent_id for e in hub.authenticated) > logins,
            settle_timeout=30,
        )

        assert_booted_clean(second)
        assert second.unit_active, second.tails()
        assert second.settled, "the agent did not log in again after the second run"
        assert [p for p in machine.listdir("/opt") if "citrus" in p] == ["citrus-agent"]
        assert_env_in_place(machine, dep)


def test_hostile_but_valid_values_arrive_byte_for_byte_and_run_nothing(
    deploy: Callable[..., Deployment], git: GitServer, boot_pg_conninfo: str
) -> None:
    path = "/h';$(touch$IFS/tmp/pwned);'?q=$HOME&r=(x)!*,~@"
    dep = deploy(ws_path=path)
    with Machine("warm") as machine:
        result = boot(machine, git, boot_pg_conninfo, dep)

        assert_booted_clean(result)
        assert_env_in_place(machine, dep)
        assert not machine.exists("/tmp/pwned")
        assert result.settled, result.tails()


# -- the old platform's script, same harness, same stand-ins: the assertions must catch it ----


def test_the_old_script_fails_the_env_location_and_token_assertions(
    git: GitServer, token: str, boot_pg_conninfo: str, new_agent: Callable[[], tuple[str, str]]
) -> None:
    agent_id, key = new_agent()
    with Hub(boot_pg_conninfo) as old_hub:
        url = old_hub.url
        dep = Deployment(agent_id, key, url, "")
        user_data = render_old_script(
            github_token=token,
            agent_id=agent_id,
            agent_key=key,
            engine_ws_url=url,
            repo=git.host_path,
        )
        with Machine("bare") as machine:
            machine.trust_ca(git.ca_pem)
            result = machine.boot(
                user_data,
                timeout=600,
                settle=lambda: status_of(boot_pg_conninfo, agent_id) == "online",
                settle_timeout=10,  # its unit fails at once: .env is not where the agent reads it
            )
            timings.record("old script, bare image", result)

            assert result.cloud_init_done, result.tails()
            with pytest.raises(AssertionError, match=r"^no /opt/citrus-agent/\.env"):
                assert_env_in_place(machine, dep)
            with pytest.raises(
                AssertionError, match=r"token found in: \.git/config, citrus-init\.log"
            ):
                assert_no_token_leak(machine, result, token)
            assert machine.exists("/.env"), "the old script writes .env to its working dir"
            assert status_of(boot_pg_conninfo, agent_id) == "offline"
