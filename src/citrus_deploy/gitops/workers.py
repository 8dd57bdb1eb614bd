"""Queue workers for the duration of one command (`apply --workers N`, `drift --workers N`).

For a pipeline with no service running: the same `citrus-deploy service worker` processes the
service runs, with this process's environment (DATABASE_URL, deployer settings, secrets), so
the rollout goes through exactly the code HTTP deployments go through. They are stopped with
SIGTERM at the end (a running deployment finishes its step first) and waited for; their output
goes to one temp file, shown when something fails.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from citrus_deploy.errors import CitrusError

_STOP_SECONDS = 60.0  # SIGTERM lets the deployment in flight finish its step
_TAIL_LINES = 60


class WorkerDied(CitrusError):
    """A worker started for the command exited before the command ended."""


class NoWorkers(CitrusError):
    """Nothing runs the queue: no worker of the service is alive and none was asked for."""


# A worker beats every WORKER_HEARTBEAT_INTERVAL (10 s); the service takes one silent for
# WORKER_STALLED_TIMEOUT (30 s) as dead.
_ALIVE_SECONDS = 30


class ServiceWorkersWatch:
    """While a command waits on the service's workers: raises NoWorkers once none has reported
    for 30 s (checked every `every` seconds), instead of waiting for ever."""

    def __init__(self, conn: Any, every: float = 10.0) -> None:
        self.conn = conn
        self.every = every
        self._last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        require_workers(self.conn)


def require_workers(conn: Any) -> None:
    """Raises NoWorkers unless a worker of the service beat within the last 30 s.

    Without one, a queued deployment or check would wait for ever, and so would the command.
    """
    row = conn.execute(
        "SELECT count(*) FROM procrastinate_workers "
        "WHERE last_heartbeat > now() - make_interval(secs => %s)",
        (_ALIVE_SECONDS,),
    ).fetchone()
    if not row or not row[0]:
        raise NoWorkers(
            "no worker of the service is running (none has reported in the last "
            f"{_ALIVE_SECONDS} s), so nothing would run the queue: start the service's "
            "workers (`citrus-deploy service worker`), or pass --workers N to run N for the "
            "duration"
        )


class Workers:
    """`count` worker processes; a context manager. `check()` raises WorkerDied when one ended."""

    def __init__(self, count: int, *, env: dict[str, str] | None = None) -> None:
        self.count = count
        self.env = dict(os.environ if env is None else env)
        # Workers load the service's settings, which require an admin token they never use:
        # without one in the environment, a random one nobody knows.
        self.env.setdefault("ADMIN_TOKEN", secrets.token_urlsafe(32))
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    def start(self) -> Workers:
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the duration)
            prefix="gitops-workers-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        for _ in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "citrus_deploy", "service", "worker"],
                    env=self.env,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                )
            )
        return self

    def check(self) -> None:
        for proc in self.procs:
            code = proc.poll()
            if code is not None:
                raise WorkerDied(
                    f"worker {proc.pid} exited with code {code}; its log:\n{self.log_tail()}"
                )

    def stop(self) -> list[int]:
        """SIGTERM to each, then waits (SIGKILL after a minute); returns their exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(_STOP_SECONDS))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        if self._log is not None:
            self._log.close()
        return codes

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        if self._log is not None and not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        shown = "\n".join(text[-lines:])
        return f"{shown}\n(full log: {self.log_path})"

    def show_log(self, out: IO[str] | None = None) -> None:
        print(f"-- log of the {self.count} worker(s) --\n{self.log_tail()}", file=out or sys.stderr)

    def __enter__(self) -> Workers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        codes = self.stop()
        failed = exc is not None and not isinstance(exc, WorkerDied)  # WorkerDied has the log
        if failed or any(code not in (0, -signal.SIGTERM) for code in codes):
            self.show_log()
        elif self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
