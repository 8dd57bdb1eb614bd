"""The deployment's child process: one `up` or `destroy` in `python -m citrus_deploy.engine.child`.

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
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from citrus_deploy.engine.choose import make_deployer
from citrus_deploy.engine.deployer import (
    DeployError,
    StackConfig,
    StackValue,
    last_lines,
)
from citrus_deploy.engine.repair import repair_steps

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
    *,
    on_killed: Callable[[DeployError], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Runs one `up`/`destroy`, or a read-only check (`preview`, `refresh` = refresh
    --preview-only), in `python -m citrus_deploy.engine.child`; returns the outputs (a check's
    result).

    Raises DeployError. Cancelling this coroutine stops the child as Pulumi's CLI expects to be
    stopped: SIGTERM, so it finishes its in-flight steps, saves its checkpoint and releases the
    stack's lock; SIGKILL to its whole process group only after `options["stop_grace"]`
    seconds. A child that had to be killed, or died without a result, may have left the lock
    and pending operations: that is a DeployError with repair steps (never retried), handed to
    `on_killed` when the coroutine was cancelled.
    """
    request = {
        "kind": kind,
        "stack": stack,
        "config": {k: [v.value, v.secret] for k, v in config.items()},
        "options": dict(options),
    }
    grace = float(options.get("stop_grace", DEFAULT_STOP_GRACE))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "citrus_deploy.engine.child",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=_work_dir(options),
        env=_child_environment(os.environ),
        start_new_session=True,  # its own process group: killed as a whole
        limit=1 << 20,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    results: list[dict[str, Any]] = []

    async def read(stdout: asyncio.StreamReader) -> None:
        async for raw in stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(RESULT_MARK):
                results.append(json.loads(line[1:]))
            else:
                await on_output(line)

    reader = asyncio.ensure_future(read(proc.stdout))
    try:
        proc.stdin.write(json.dumps(request).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        await asyncio.shield(reader)
        code = await proc.wait()
    except BaseException:
        if await _stop(proc, reader, grace):
            killed = _killed_error(stack, f"killed after {grace:g}s of SIGTERM", kind)
            if on_killed is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(on_killed(killed))
        raise
    if not results:
        raise _killed_error(stack, f"exited with code {code} without a result", kind)
    result = results[-1]
    if not result["ok"]:
        raise DeployError(
            str(result["error"]),
            transient=bool(result["transient"]),
            repair=result.get("repair"),
        )
    outputs: dict[str, Any] = result["outputs"]
    return outputs


DEFAULT_STOP_GRACE = 60.0


def _work_dir(options: Mapping[str, Any]) -> str:
    """Where the child runs: the worker's work directory (never the program's directory)."""
    path = Path(options.get("work_dir") or tempfile.gettempdir())
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


READ_ONLY_KINDS = frozenset({"preview", "refresh"})


def _killed_error(stack: str, how: str, kind: str = "up") -> DeployError:
    if kind in READ_ONLY_KINDS:  # a preview writes no state and takes no lock: nothing to repair
        return DeployError(f"the {kind} check's process {how}")

    return DeployError(
        f"the deployer process {how}: the stack may be locked and hold pending operations",
        repair=repair_steps(stack, maybe_created=True),
    )


async def _stop(proc: Any, reader: asyncio.Future[None], grace: float) -> bool:
    """SIGTERM, then SIGKILL to the group after `grace` s; True when it had to kill. The
    output keeps being read meanwhile (a child blocked on a full pipe would never end)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reader, 5)
        return False
    except BaseException:  # the grace ran out, or we were cancelled again meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        reader.cancel()
        return True


def _on_stop_request(stop: Callable[[], None], grace: float) -> Callable[[], None]:
    """SIGTERM, or the worker's death: stop the deployment as the CLI stops (gracefully), and
    kill this process group if that has not ended it within `grace` seconds. Returns the
    function that asks for that stop."""
    state = {"asked": False}
    parent = os.getppid()

    def request() -> None:
        if state["asked"]:
            return
        state["asked"] = True
        stop()

        def deadline() -> None:
            time.sleep(grace)
            os.killpg(os.getpgid(0), signal.SIGKILL)

        threading.Thread(target=deadline, daemon=True, name="stop-deadline").start()

    signal.signal(signal.SIGTERM, lambda *_: request())

    def watch() -> None:
        # Without it a deployment would go on after its worker is gone, while the job is retried.
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                request()
                return

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    return request


def _child_main() -> int:
    request = json.loads(sys.stdin.read())
    config = {k: StackValue(v, bool(s)) for k, (v, s) in request["config"].items()}
    options = request["options"]

    printing = threading.Lock()  # the engine stand-in's steps print from several threads
    stoppers: list[Callable[[], None]] = []  # set once the deployer exists

    def emit(line: str) -> None:
        text = "".join(
            part.replace(RESULT_MARK, " ") + "\n" for part in line.rstrip("\n").splitlines() or [""]
        )
        with printing:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError:
                # The worker is gone (a broken pipe) before the parent watch noticed. The output
                # has no reader any more, but the step that printed it must still complete and
                # be recorded: an error here would leave what it made out of the checkpoint,
                # and the retried `up` would make it again. Drop the output, stop gracefully.
                _discard_stdout()
                for stop in stoppers:
                    stop()

    try:
        deployer = make_deployer(options)
        grace = float(options.get("stop_grace", DEFAULT_STOP_GRACE))
        stoppers.append(_on_stop_request(deployer.cancel, grace))
        if request["kind"] == "up":
            outputs = deployer.up(request["stack"], config, emit)
        elif request["kind"] == "preview":
            outputs = deployer.preview(request["stack"], config, emit)
        elif request["kind"] == "refresh":  # --preview-only: the checks never refresh for real
            outputs = deployer.preview_refresh(request["stack"], config, emit)
        else:
            deployer.destroy(request["stack"], config, emit)
            outputs = {}
        result: dict[str, Any] = {"ok": True, "outputs": outputs}
    except DeployError as exc:
        result = {"ok": False, "error": str(exc), "transient": exc.transient, "repair": exc.repair}
    except Exception as exc:  # anything else: reported, not a traceback with values in it
        message = f"{type(exc).__name__}: {last_lines(str(exc), 5)}"
        result = {"ok": False, "error": message, "transient": False}
    try:
        print(RESULT_MARK + json.dumps(result), flush=True)
    except OSError:  # nobody to tell: the worker is gone, and the retry reads the checkpoint
        _discard_stdout()
    return 0


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so that no later write (nor the flush at exit) fails."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(_child_main())
