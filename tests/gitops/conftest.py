"""A real Git repository with a fleet folder, for every GitOps test; and the harness of the tests
that run `gitops` against the service: its environment, a worker, the hub stand-in, helpers.

    def test_x(fleet_repo):
        fleet_repo.write("web-1", size="s-1vcpu-1gb", tags=["web"])   # fleet/Pulumi.web-1.yaml
        sha = fleet_repo.commit("add web-1")
        fleet_repo.rename("web-1", "web-2"); fleet_repo.remove("web-3"); fleet_repo.commit("...")

Keys without a namespace get `citrus-deploy:`; write `gitops:adopt=True` as
`fleet_repo.write("web-1", **{"gitops:adopt": True})`. `write_text` writes any file verbatim.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from citrus_deploy.engine import fingerprint
from citrus_deploy.gitops.cli import main as gitops_main
from tests.service.conftest import Worker, service_env, wait_for

REPO = "acme/fleet"

GIT_IDENTITY = (
    "-c",
    "user.name=GitOps Test",
    "-c",
    "user.email=gitops-test@example.invalid",
    "-c",
    "commit.gpgsign=false",
)


@dataclass
class FleetRepo:
    """A Git repository at `root` with the fleet folder `root/fleet`."""

    root: Path
    fleet: Path

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *GIT_IDENTITY, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def path(self, name: str) -> Path:
        return self.fleet / f"Pulumi.{name}.yaml"

    def write(self, name: str, **values: Any) -> Path:
        """fleet/Pulumi.<name>.yaml with `values` under `config:` (namespaced as a user writes)."""
        config = {key if ":" in key else f"citrus-deploy:{key}": v for key, v in values.items()}
        return self.write_text(self.path(name).name, yaml.safe_dump({"config": config}))

    def write_text(self, filename: str, text: str) -> Path:
        path = self.fleet / filename
        path.write_text(text)
        return path

    def remove(self, name: str) -> None:
        self.path(name).unlink()

    def rename(self, old: str, new: str) -> None:
        self.path(old).rename(self.path(new))

    def commit(self, message: str = "change the fleet") -> str:
        """Commits everything in the repository; returns the new HEAD sha."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    """An empty repository (one commit with a README in the fleet folder)."""
    root = tmp_path / "repo"
    fleet = root / "fleet"
    fleet.mkdir(parents=True)
    repo = FleetRepo(root, fleet)
    repo.git("init", "--quiet", "--initial-branch=main")
    (fleet / "README.md").write_text("One file per server.\n")
    repo.commit("start the fleet")
    return repo


def checkout_of_the_program(repo: FleetRepo) -> Path:
    """Makes the fleet repository a checkout of citrus-deploy (the README's walk-through): the
    program under src/citrus_deploy, committed. Returns that package directory."""
    package = repo.root / "src" / "citrus_deploy"
    shutil.copytree(
        fingerprint.PACKAGE / "program",
        package / "program",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    for name in fingerprint.ROOT_MODULES:
        shutil.copy(fingerprint.PACKAGE / name, package / name)
    (package / "web").mkdir()
    (package / "web" / "app.py").write_text("# not the program\n")
    repo.write("web-1")
    repo.commit("the program and its fleet")
    return package


# -- `gitops` against the service: real PostgreSQL, queue workers, the engine stand-in ------------


class Hub(threading.Thread):
    """The Citrus hub stand-in: sets an agent 'online' when the hub would see it connect.

    This is the true boundary of these tests. Real agents boot on droplets and connect to the
    hub, which then sets `agents.status = 'online'`; neither droplets nor the hub exist here.
    This thread does that one write, every 0.1 s, for the agents of the servers it accepts, and
    never for the others, whose agents stay 'offline' as an agent that never boots would.
    Everything else (the `active` server, the gates) is the product's own code.
    """

    def __init__(self, conninfo: str, refuse: set[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.refuse = set(refuse or ())
        self.stopped = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self.stopped.wait(0.1):
                found = conn.execute("SELECT name FROM agents WHERE status <> 'online'")
                names = [
                    n for (n,) in found.fetchall() if n.removeprefix("agent-") not in self.refuse
                ]
                if names:
                    conn.execute(
                        "UPDATE agents SET status = 'online' WHERE name = ANY(%s)", (names,)
                    )

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


@pytest.fixture
def env(service_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of `apply` and of its workers: the stand-in engine, quick settings."""
    values = service_env(service_db, tmp_path / "state", CITRUS_TEST_ENGINE_STEP_DELAY="0")
    for key in ("GITHUB_TOKEN", "ENGINE_WS_URL", "DIGITALOCEAN_TOKEN", "DO_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key in ("CITRUS_GITOPS_REPOSITORY", "GITHUB_REPOSITORY", "AGENT_CONNECT_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**values, "CITRUS_GITOPS_POLL_SECONDS": "0.1"}.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def hub(service_db: str) -> Iterator[Hub]:
    thread = Hub(service_db)
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    """A worker of the service, running: apply refuses to queue work nobody would run."""
    started = Worker(env, tmp_path / "worker.log").start()
    wait_for(
        lambda: query(env["DATABASE_URL"], "SELECT count(*) FROM procrastinate_workers")[0][0],
        what="the worker to report in",
    )
    yield started
    started.stop()
    if started.proc is not None and started.proc.returncode not in (0, -15):
        print((tmp_path / "worker.log").read_text())


def gitops(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`citrus-deploy gitops ...` in this process; (exit code, stdout, stderr)."""
    code = gitops_main(list(argv))
    out, err = capsys.readouterr()
    OUTPUT.append(f"$ gitops {' '.join(argv)}\n{out}{err}")
    return code, out, err


OUTPUT: list[str] = []  # every command's output of the test, shown when it fails


@pytest.fixture(autouse=True)
def _show_output() -> Iterator[None]:
    """Prints the commands' output after the test (pytest shows it when the test failed)."""
    OUTPUT.clear()
    yield
    if OUTPUT:  # only tests that ran `gitops` here have any
        print("\n".join(OUTPUT))


def apply(capsys: pytest.CaptureFixture[str], repo: FleetRepo, *extra: str) -> tuple[int, str, str]:
    return gitops(capsys, "apply", str(repo.fleet), "--repository", REPO, *extra)


def query(conninfo: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(sql, params).fetchall()


def table(out: str) -> dict[str, list[str]]:
    """The final table's rows by server: [action, wave, deployment, outcome, error...]."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SERVER "))
    found = {}
    for line in lines[start + 1 :]:
        if line.startswith("apply "):
            break
        cells = line.split()
        if cells[4] == "not":  # "not started"
            cells = [*cells[:4], "not started", *cells[6:]]
        found[cells[0]] = cells[1:]
    return found


def make_fleet(repo: FleetRepo, *names: str) -> str:
    for name in names:
        repo.write(name, size="s-1vcpu-1gb")
    return repo.commit(f"add {', '.join(names)}")
