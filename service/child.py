"""The deployment's child process: one `up` or `destroy` in `python -m service.child`.

Pulumi's runtime is process-global, `stack.up()` blocks, and a child can be stopped as a whole.
The request (with secrets) goes in on stdin, never in argv; output lines come back on stdout,
and the last line is the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from service.deployer import ROOT, DeployError, StackConfig, StackValue, last_lines, make_deployer

RESULT_MARK = "\x1e"  # ASCII record separator: starts the child's final JSON line


# The worker's secrets that a deployment gets only through its request (stack config and
# options, on stdin), or not at all (ADMIN_TOKEN is the web's). The child, the Pulumi CLI and its
# plugins inherit the child's environment; these stay out of it.
WORKER_ONLY_ENV = frozenset(
    {
        "ADMIN_TOKEN",
        "DATABASE_URL",
        "GITHUB_TOKEN",
        "DIGITALOCEAN_TOKEN",
        "DO_API_TOKEN",
        "PULUMI_CONFIG_PASSPHRASE",
    }
)


def _child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name not in WORKER_ONLY_ENV}


async def run_in_child(
    kind: str,
    stack: str,
    config: StackConfig,
    options: Mapping[str, Any],
    on_output: Callable[[str], Awaitable[None]],
) -> dict[str, Any]:
    """Runs one `up`/`destroy` in `python -m service.child`; returns the outputs.

    Raises DeployError; a child that dies without a result (killed, out of memory) is a
    transient error. Cancelling this coroutine kills the child's whole process group.
    """
    request = {
        "kind": kind,
        "stack": stack,
        "config": {k: [v.value, v.secret] for k, v in config.items()},
        "options": dict(options),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.child",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(ROOT),
        env=_child_environment(os.environ),
        start_new_session=True,  # its own process group: killed as a whole
        limit=1 << 20,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    try:
        proc.stdin.write(json.dumps(request).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(RESULT_MARK):
                result = json.loads(line[1:])
            else:
                await on_output(line)
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if result is None:
        raise DeployError(
            f"the deployer process exited with code {code} without a result", transient=True
        )
    if not result["ok"]:
        raise DeployError(str(result["error"]), transient=bool(result["transient"]))
    outputs: dict[str, Any] = result["outputs"]
    return outputs


def _watch_parent() -> None:
    """Kills this process group when the worker that started it dies (e.g. SIGKILL).

    Without it a deployment would go on after its worker is gone, while the job is retried.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child_main() -> int:
    _watch_parent()
    request = json.loads(sys.stdin.read())
    config = {k: StackValue(v, bool(s)) for k, (v, s) in request["config"].items()}

    printing = threading.Lock()  # the test engine's mocks print from several threads

    def emit(line: str) -> None:
        text = "".join(
            part.replace(RESULT_MARK, " ") + "\n" for part in line.rstrip("\n").splitlines() or [""]
        )
        with printing:
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        deployer = make_deployer(request["options"])
        if request["kind"] == "up":
            outputs = deployer.up(request["stack"], config, emit)
        else:
            deployer.destroy(request["stack"], config, emit)
            outputs = {}
        result: dict[str, Any] = {"ok": True, "outputs": outputs}
    except DeployError as exc:
        result = {"ok": False, "error": str(exc), "transient": exc.transient}
    except Exception as exc:  # anything else: reported, not a traceback with values in it
        message = f"{type(exc).__name__}: {last_lines(str(exc), 5)}"
        result = {"ok": False, "error": message, "transient": False}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
