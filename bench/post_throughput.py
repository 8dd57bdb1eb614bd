"""POST /admin/servers/deploy-with-agent: accepted deployments per second and p50/p99 latency at
N concurrent clients, next to a bare FastAPI endpoint doing one INSERT on the same machine.

    .venv/bin/python -m bench.post_throughput [--clients 50] [--seconds 30]

Both servers are one uvicorn process each, against the same throwaway PostgreSQL
(citrus_deploy.standin.pg); no worker runs, so this measures acceptance (validation, auth, the
deployment row and the queue job in one transaction), not deployments. Client and servers share
this machine's CPUs.

The two endpoints take turns for --rounds rounds (the order alternating), and the table shows
each one's medians: this machine's speed drifts between 30-second windows, and single pairs of
runs of the same code gave ratios from 0.44x to 0.78x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from citrus_deploy.standin.pg import PgServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789abcdef"  # noqa: S105 (throwaway server)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


async def load(url: str, headers: dict[str, str], clients: int, seconds: float, tag: str) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def one(worker: int) -> None:
            i = 0
            while time.monotonic() < stop:
                i += 1
                started = time.perf_counter()
                response = await client.post(url, json={"name": f"{tag}-{worker}-{i}"})
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(one(w) for w in range(clients)))
        elapsed = time.monotonic() - began
    latencies.sort()
    ok = statuses.get(202, 0)
    return {
        "accepted_per_s": ok / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "requests": len(latencies),
        "statuses": statuses,
    }


def load_wrk(url: str, token: str | None, clients: int, seconds: float, tag: str) -> dict:
    """The same load with wrk (C, 2 threads): the client costs far less CPU than httpx."""
    env = {**os.environ, "BENCH_TAG": tag}
    if token:
        env["BENCH_TOKEN"] = token
    done = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{clients}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    r = dict(kv.split("=") for kv in line.split()[1:])
    ok = int(r["requests"]) - int(r["non2xx"]) - int(r["errors"])
    return {
        "accepted_per_s": ok / float(r["seconds"]),
        "p50_ms": int(r["p50_us"]) / 1000,
        "p99_ms": int(r["p99_us"]) / 1000,
        "requests": int(r["requests"]),
        "statuses": {"2xx": ok, "other": int(r["non2xx"]), "errors": int(r["errors"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx"
    )
    args = parser.parse_args()

    pg = PgServer().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conninfo = pg.conninfo()
        env = {
            **os.environ,
            "DATABASE_URL": conninfo,
            "ADMIN_TOKEN": TOKEN,
            "CITRUS_DEPLOYER": "test-engine",
            "LOG_LEVEL": "WARNING",
            "CITRUS_DB_POOL_SIZE": "10",
            "CITRUS_MAX_QUEUED": "0",  # no worker runs: the queue only grows
        }
        subprocess.run(
            [sys.executable, "-m", "citrus_deploy", "service", "migrate"],
            env=env,
            check=True,
            cwd=ROOT,
        )
        service_port, bare_port = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "citrus_deploy", "service", "web"],
                env={**env, "CITRUS_PORT": str(service_port)},
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.bare_app:app",
                    "--port",
                    str(bare_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env=env,
                cwd=ROOT,
            )
        )
        wait_up(f"http://127.0.0.1:{service_port}/healthz")
        wait_up(f"http://127.0.0.1:{bare_port}/docs")
        bare_url = f"http://127.0.0.1:{bare_port}/insert"
        service_url = f"http://127.0.0.1:{service_port}/admin/servers/deploy-with-agent"
        endpoints = {
            "bare": (bare_url, None),
            "service": (service_url, TOKEN),
        }
        results: dict[str, list[dict]] = {"bare": [], "service": []}
        for round_no in range(args.rounds):
            order = ["bare", "service"] if round_no % 2 == 0 else ["service", "bare"]
            for which in order:
                url, token = endpoints[which]
                tag = f"{which}{round_no}"
                if args.client == "wrk":
                    result = load_wrk(url, token, args.clients, args.seconds, tag)
                else:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    result = asyncio.run(load(url, headers, args.clients, args.seconds, tag))
                results[which].append(result)
                print(
                    f"round {round_no + 1}: {which:<7} {result['accepted_per_s']:7.0f}/s "
                    f"p50 {result['p50_ms']:.1f} ms, statuses {result['statuses']}",
                    flush=True,
                )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        pg.destroy()

    print(
        f"{args.clients} concurrent clients ({args.client}), {args.seconds:g} s each, "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs; medians over the rounds"
    )
    print("| endpoint | accepted/s | p50 ms | p99 ms | requests (all rounds) |")
    print("|---|---|---|---|---|")
    medians = {}
    labels = {"bare": "bare FastAPI + 1 INSERT", "service": "POST deploy-with-agent"}
    for which, label in labels.items():
        runs = results[which]
        medians[which] = statistics.median(r["accepted_per_s"] for r in runs)
        print(
            f"| {label} | {medians[which]:.0f} "
            f"| {statistics.median(r['p50_ms'] for r in runs):.1f} "
            f"| {statistics.median(r['p99_ms'] for r in runs):.1f} "
            f"| {sum(r['requests'] for r in runs)} |"
        )
    by_round = ", ".join(
        f"{srv['accepted_per_s'] / bare['accepted_per_s']:.2f}x"
        for srv, bare in zip(results["service"], results["bare"], strict=True)
    )
    ratio = medians["service"] / medians["bare"]
    print(f"ratio (service / bare): {ratio:.2f}x of the medians; by round: {by_round}")


if __name__ == "__main__":
    main()
