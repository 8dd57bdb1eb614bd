"""`citrus-deploy gitops plan` over 10,000 stack files next to only parsing them with PyYAML's C
loader.

    .venv/bin/python -m bench.gitops_plan [--servers 10000] [--repeat 3]

Sets up what a real plan meets: a Git repository whose fleet folder holds the stack files
(realistic, 8 keys each), and a throwaway PostgreSQL (Debian's binaries) whose deployments
record every server as applied by GitOps, every other one with an older size. Then, in one run:
(a) `yaml.load(..., Loader=yaml.CSafeLoader)` of every file, read included;
(b) the whole `plan` command in this process: Git (commit, uncommitted files), the program
    hash, loading the deployed fleet from the database, reading and validating every file (by
    one process per CPU, the default), the plan, and writing plan.json and plan.md;
(c) the same with `--jobs 1`: every file read by this one process, as (a) is.
Goal: (b) / (a) <= 2. Each number is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml

from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.gitops.cli import main as gitops_main
from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate

REGIONS = ("sfo3", "nyc3", "ams3", "fra1")
ROLES = ("web", "worker", "builder")
SSH_KEYS = ("41203417", "41203522", "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa")
REPOSITORY = "bench/fleet"


def server_config(i: int) -> dict[str, Any]:
    return {
        "region": REGIONS[i % len(REGIONS)],
        "size": "s-1vcpu-1gb",
        "image": "debian-12-x64",
        "engineWsUrl": "wss://engine.citrushost.io",
        "agentRepoRef": "v1.4.2",
        "tags": ["citrus", f"team-{i % 7}", ROLES[i % len(ROLES)]],
        # A team's keys: account-wide ids, the same few across the fleet.
        "sshKeys": list(SSH_KEYS[: 1 + i % len(SSH_KEYS)]),
        "monitoring": True,
    }


def write_fleet(folder: Path, servers: int) -> None:
    for i in range(servers):
        lines = ["config:"]
        for key, value in server_config(i).items():
            if isinstance(value, list):
                lines.append(f"  citrus-deploy:{key}:")
                lines += [f'    - "{item}"' for item in value]
            else:
                text = str(value).lower() if value is True else value
                lines.append(f"  citrus-deploy:{key}: {text}")
        (folder / f"Pulumi.web-{i:05d}.yaml").write_text("\n".join(lines) + "\n")


def record_fleet(conninfo: str, servers: int, program: str) -> None:
    """Each server as a succeeded GitOps `up` left it: agent, servers row, deployment."""
    from psycopg.types.json import Jsonb

    rows = []
    for i in range(servers):
        config = {"serverName": f"web-{i:05d}", **server_config(i)}
        if i % 2:
            config["size"] = "s-1vcpu-512mb-10gb"
        rows.append((f"web-{i:05d}", Jsonb(config), REPOSITORY, "0" * 40, program))
    with psycopg.connect(conninfo) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY deployments (server_name, config, repository, commit, program_hash, "
                "kind, state, source, finished_at) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row((*row, "up", "succeeded", "gitops", "now"))
        conn.execute(
            "INSERT INTO agents (id, key, name, status) SELECT gen_random_uuid(), "
            "repeat('a', 64), 'agent-' || server_name, 'online' FROM deployments"
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id) "
            "SELECT d.server_name, 1000 + d.id, d.config->>'region', d.config->>'size', 'active', "
            "a.id FROM deployments d JOIN agents a ON a.name = 'agent-' || d.server_name"
        )
        conn.execute("ANALYZE")


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def parse_only(folder: Path) -> int:
    count = 0
    for path in folder.iterdir():
        yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
        count += 1
    return count


def plan_command(folder: Path, out: Path, jobs: int = 0) -> None:
    argv = ["plan", str(folder), "--repository", REPOSITORY, "--jobs", str(jobs)]
    argv += ["--json", str(out / "plan.json"), "--markdown", str(out / "plan.md")]
    with contextlib.redirect_stderr(io.StringIO()) as said:
        code = gitops_main(argv)
    if code != 0:
        raise SystemExit(f"plan failed ({code}): {said.getvalue()}")


def best(repeat: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def database() -> Iterator[str]:
    server = PgServer().start()
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        migrate(server.conninfo("bench"))
        yield server.conninfo("bench")
    finally:
        server.destroy()


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--servers", type=int, default=10_000)
    options.add_argument("--repeat", type=int, default=3)
    args = options.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database() as conninfo:
        repo = Path(tmp) / "repo"
        folder = repo / "fleet"
        folder.mkdir(parents=True)
        write_fleet(folder, args.servers)
        git(repo, "init", "-q")
        git(repo, "add", ".")
        git(
            repo,
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-qm",
            "fleet",
        )
        record_fleet(conninfo, args.servers, program_hash())
        os.environ["DATABASE_URL"] = conninfo
        out = Path(tmp)
        plan_command(folder, out)  # warm the imports, as a CLI run has them loaded too
        summary = (out / "plan.md").read_text().splitlines()[:6]
        parse = best(args.repeat, lambda: parse_only(folder))
        plan = best(args.repeat, lambda: plan_command(folder, out))
        single = best(args.repeat, lambda: plan_command(folder, out, jobs=1))
        size = (out / "plan.json").stat().st_size, (out / "plan.md").stat().st_size
    print(f"stack files:            {args.servers}, recorded in PostgreSQL as applied")
    print(f"(a) parse only (C):     {parse:.3f} s")
    cpus = os.cpu_count()
    print(f"(b) plan command:       {plan:.3f} s   ratio (b)/(a): {plan / parse:.2f}x (goal <= 2x)")
    print(f"    its files read by {cpus} processes (one per CPU, the default)")
    print(f"(c) plan --jobs 1:      {single:.3f} s   ratio (c)/(a): {single / parse:.2f}x")
    print(f"    plan.json {size[0]:,} bytes, plan.md {size[1]:,} bytes; plan.md begins:")
    for line in summary:
        print(f"    | {line}")


if __name__ == "__main__":
    main()
