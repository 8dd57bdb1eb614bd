"""The seam between the worker and the Pulumi engine: `up` and `destroy` of one stack.

`Deployer` is the interface. `AutomationDeployer` is the real one: the Pulumi Automation API on
the project directory itself (the same program as `pulumi up`). `TestEngineDeployer` is the
stand-in for the Pulumi engine *and* DigitalOcean (CITRUS_DEPLOYER=test-engine): it runs the
same program under tests/engine.py, which executes the real row provider against PostgreSQL and
fakes only the droplet, so a newcomer with no cloud account sees a POST become rows.

Each deployment runs in a child process of its own (`run_in_child`, `python -m
service.deployer`): Pulumi's runtime is process-global, `stack.up()` blocks, and a child can be
killed as a whole. The request (with secrets) goes in on stdin, never in argv; output lines come
back on stdout, and the last line is the result.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from citrus.errors import CitrusError

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "\x1e"  # ASCII record separator: starts the child's final JSON line

OnOutput = Callable[[str], None]


@dataclass(frozen=True)
class StackValue:
    value: str
    secret: bool = False


StackConfig = Mapping[str, StackValue]  # fully qualified keys: "citrus-deploy:serverName"


class DeployError(CitrusError):
    """`up` or `destroy` failed. `transient` = worth retrying later (lock, network, crash)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Deployer(Protocol):
    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """Creates or updates the stack; returns its outputs."""
        ...

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        """Destroys the stack's resources and removes the stack; a missing stack is done."""
        ...


# -- the real one ------------------------------------------------------------------------------

# Messages of the CLI that mean "try again later", not "the program or its config is wrong".
_TRANSIENT_HINTS = (
    "stack is currently locked",
    "connection reset",
    "connection refused",
    "timeout",
    "timed out",
    "temporary failure",
    "too many requests",
    "rate limit",
    "503 service unavailable",
    "502 bad gateway",
    "cannot connect to postgresql",
    "lost the connection",
)


def looks_transient(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _TRANSIENT_HINTS)


def _secret_env_names() -> dict[str, str]:
    """Secret config key -> the environment variable the program reads it from instead."""
    from citrus.config import DO_TOKEN_ENV, ENV_FALLBACKS
    from service.settings import PROJECT

    names = {f"{PROJECT}:{key}": env for key, env in ENV_FALLBACKS.items()}
    names["digitalocean:token"] = DO_TOKEN_ENV[0]
    return names


class AutomationDeployer:
    """Pulumi Automation API on the project directory (`work_dir` = project root).

    State goes to PULUMI_BACKEND_URL (file://, s3://, postgres://, ...). Plain config is set in
    full before every operation, so any worker on any machine can run any stack. Secret values
    never go into stack config: the Automation API sets config with `pulumi config set-all
    --secret key=value`, which would show them in the process list. They reach the CLI (and
    the program and its providers, which inherit its environment) as the environment variables
    the program falls back to (GITHUB_TOKEN, DATABASE_URL, DIGITALOCEAN_TOKEN); the program
    wraps them as secrets before they reach the engine. Those keys are removed from the stack's
    config before each operation: a value left there (`pulumi config set --secret` by hand)
    would win over the environment, and the service's settings are the ones that must count.
    """

    def __init__(
        self,
        *,
        backend_url: str,
        passphrase: str | None = None,
        passphrase_file: str | None = None,
        work_dir: Path = ROOT,
    ) -> None:
        self.work_dir = work_dir
        self.env = {"PULUMI_BACKEND_URL": backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        if passphrase:
            self.env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
        if passphrase_file:
            self.env["PULUMI_CONFIG_PASSPHRASE_FILE"] = passphrase_file
        parts = urlsplit(backend_url)
        if parts.scheme == "file":
            Path(parts.path).mkdir(parents=True, exist_ok=True)

    def _split(self, config: StackConfig) -> tuple[dict[str, Any], dict[str, str]]:
        """(plain config for `config set-all`, environment for the secrets)."""
        from pulumi import automation as auto

        env_names = _secret_env_names()
        plain: dict[str, Any] = {}
        env: dict[str, str] = {}
        for key, value in config.items():
            if not value.secret:
                plain[key] = auto.ConfigValue(value.value)
            elif key in env_names:
                env[env_names[key]] = value.value
            else:
                raise DeployError(
                    f"secret config key {key} has no environment variable to travel in; "
                    "it would have to go on the pulumi command line"
                )
        return plain, env

    def _refuse_foreign_settings(self, stack: str) -> None:
        """A new stack must not adopt a `Pulumi.<stack>.yaml` it finds in the project.

        Such a file belongs to a stack run with `pulumi up` (Pulumi.dev.yaml is the example):
        its values would flow into this server, and the worker would rewrite the file.
        """
        for suffix in (".yaml", ".yml"):
            found = self.work_dir / f"Pulumi.{stack}{suffix}"
            if found.exists():
                raise DeployError(
                    f"{found.name} in the project directory holds the config of a stack this "
                    "service did not create (one run with `pulumi up`?); the service will not "
                    "take it over: choose another server name"
                )

    @staticmethod
    def _configure(ws_stack: Any, config: StackConfig, plain: dict[str, Any]) -> None:
        ws_stack.set_all_config(plain)
        travelling = sorted(key for key, value in config.items() if value.secret)
        if travelling:  # `config rm-all` names keys only; a missing key is no error
            ws_stack.remove_all_config(travelling)

    def _options(self, secrets_env: dict[str, str]) -> Any:
        from pulumi import automation as auto

        return auto.LocalWorkspaceOptions(
            env_vars={**self.env, **secrets_env}, secrets_provider="passphrase"
        )

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        work_dir, opts = str(self.work_dir), self._options(secrets_env)
        with _translated():
            try:
                ws_stack = auto.select_stack(stack_name=stack, work_dir=work_dir, opts=opts)
            except auto.StackNotFoundError:
                self._refuse_foreign_settings(stack)
                ws_stack = auto.create_stack(stack_name=stack, work_dir=work_dir, opts=opts)
            self._configure(ws_stack, config, plain)
            result = ws_stack.up(on_output=on_output, on_event=_event_printer(on_output))
            return {key: out.value for key, out in result.outputs.items() if not out.secret}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        with _translated():
            try:
                ws_stack = auto.select_stack(
                    stack_name=stack, work_dir=str(self.work_dir), opts=self._options(secrets_env)
                )
            except auto.StackNotFoundError:
                on_output(f"stack {stack} does not exist: nothing to destroy")
                return
            self._configure(ws_stack, config, plain)
            ws_stack.destroy(on_output=on_output, on_event=_event_printer(on_output))
            ws_stack.workspace.remove_stack(stack)


@contextlib.contextmanager
def _translated() -> Any:
    """Automation API errors -> DeployError, with the CLI's own words (it masks secrets)."""
    from pulumi import automation as auto

    try:
        yield
    except auto.ConcurrentUpdateError as exc:
        raise DeployError(
            "the stack is locked by another update (if none runs, a crashed update left the "
            f"lock: `pulumi cancel`): {_last_lines(str(exc))}",
            transient=True,
        ) from None
    except auto.CommandError as exc:
        text = _last_lines(str(exc))
        raise DeployError(f"pulumi failed: {text}", transient=looks_transient(text)) from None


def _last_lines(text: str, count: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def _event_printer(on_output: OnOutput) -> Callable[[Any], None]:
    """Engine events worth a line of their own: failed steps and error diagnostics."""

    def on_event(event: Any) -> None:
        line = describe_event(event)
        if line:
            on_output(line)

    return on_event


def describe_event(event: Any) -> str | None:
    failed = getattr(event, "res_op_failed_event", None)
    if failed is not None:
        op = getattr(failed.metadata.op, "value", failed.metadata.op)  # OpType.CREATE -> create
        return f"[event] failed: {op} {failed.metadata.urn}"
    diag = getattr(event, "diagnostic_event", None)
    if diag is not None and str(diag.severity).startswith("error"):
        where = f" {diag.urn}" if diag.urn else ""
        return f"[event] error{where}: {diag.message.strip()}"
    summary = getattr(event, "summary_event", None)
    if summary is not None:
        return f"[event] summary: {dict(summary.resource_changes)} in {summary.duration_seconds}s"
    return None


# -- the stand-in ------------------------------------------------------------------------------


class TestEngineDeployer:
    """Stand-in for the Pulumi engine and DigitalOcean; see the module docstring.

    It keeps a small state file per stack (under `<backend dir>/test-engine/`, like Pulumi's
    checkpoint after each step), so a retried `up` reuses what an interrupted one created and
    `destroy` can run the pickled row providers' `delete`, as Pulumi does. The state holds the
    agent key in clear: it is for development and tests, never for real servers.
    """

    __test__ = False

    def __init__(self, state_dir: Path, *, step_delay: float = 0.0) -> None:
        self.state_dir = state_dir
        self.step_delay = step_delay
        self._lock = threading.Lock()

    def _path(self, stack: str) -> Path:
        return self.state_dir / f"{stack}.json"

    def _load(self, stack: str) -> dict[str, Any]:
        path = self._path(stack)
        if path.exists():
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
        return {"resources": {}}

    def _save(
        self, stack: str, state: dict[str, Any], key: str | None = None, entry: Any = None
    ) -> None:
        # The mock runtime registers resources from several threads at once.
        with self._lock:
            if key is not None:
                state["resources"][key] = entry
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path = self._path(stack)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            tmp.replace(path)

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        run_program = _test_engine().run_program
        state = self._load(stack)
        engine = _StatefulEngine(
            {k: v.value for k, v in config.items()},
            state=state,
            save=lambda key, entry: self._save(stack, state, key, entry),
            on_output=on_output,
            step_delay=self.step_delay,
        )
        on_output(f"Updating ({stack}) with the test engine (no Pulumi CLI, DigitalOcean faked)")
        started = time.monotonic()
        try:
            run_program(engine, stack=stack)
        except Exception as exc:
            text = _program_error(exc)
            raise DeployError(text, transient=looks_transient(text)) from None
        outputs: dict[str, Any] = next(
            (v for k, v in engine.registered_outputs.items() if k.endswith("::agent-server")), {}
        )
        on_output(f"Update succeeded in {time.monotonic() - started:.1f}s")
        return {k: v for k, v in outputs.items() if isinstance(v, str | int | float | bool)}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        import dill
        from pulumi.dynamic import ConfigureRequest
        from pulumi.dynamic.config import Config as DynamicConfig

        engine = _test_engine()
        PROJECT, PROVIDER_KEY, unwrap = engine.PROJECT, engine.PROVIDER_KEY, engine.unwrap  # noqa: N806

        state = self._load(stack)
        if not state["resources"]:
            on_output(f"stack {stack} has no resources: nothing to destroy")
            self._path(stack).unlink(missing_ok=True)
            return
        flat = {k: v.value for k, v in config.items()}
        for key in reversed(list(state["resources"])):
            saved = state["resources"][key]
            typ, name = key.split("::", 1)
            outputs = unwrap(saved["outputs"])
            if typ.startswith("pulumi-python:dynamic") and PROVIDER_KEY in outputs:
                # As Pulumi does: the provider pickled into state at create time deletes.
                # The state file is our own (mode 0600), as trusted as Pulumi's checkpoint.
                provider = dill.loads(base64.b64decode(outputs[PROVIDER_KEY]))  # noqa: S301
                provider.configure(ConfigureRequest(DynamicConfig(flat, PROJECT)))
                try:
                    provider.delete(saved["id"], outputs)
                except CitrusError as exc:
                    raise DeployError(
                        f"deleting {name}: {exc}", transient=_db_unreachable(exc)
                    ) from None
            time.sleep(self.step_delay)
            del state["resources"][key]
            self._save(stack, state)
            on_output(f" -  {typ} {name} deleted")
        self._path(stack).unlink(missing_ok=True)
        on_output("Destroy succeeded")


def _db_unreachable(exc: BaseException) -> bool:
    from citrus.errors import DatabaseUnreachable

    return isinstance(exc, DatabaseUnreachable)


def _program_error(exc: BaseException) -> str:
    """The program's own message (e.g. `invalid configuration ...`), without Python noise."""
    text = str(exc).strip() or type(exc).__name__
    return text.replace("Program failed with an unhandled exception:", "").strip()


def _test_engine() -> Any:
    """tests/engine.py, imported at run time: only the child process needs it (it loads
    Pulumi's mock runtime), and it stays outside the service's type-checked code."""
    return importlib.import_module("tests.engine")


def _make_stateful_engine() -> type:
    TestEngine = _test_engine().TestEngine  # noqa: N806

    class StatefulEngine(TestEngine):  # type: ignore[misc,valid-type]
        """TestEngine that checkpoints each created resource and reuses it on the next run."""

        def __init__(
            self,
            config: dict[str, str],
            *,
            state: dict[str, Any],
            save: Callable[[str, Any], None],
            on_output: OnOutput,
            step_delay: float,
        ) -> None:
            super().__init__(config)
            self.state = state
            self.save = save
            self.on_output = on_output
            self.step_delay = step_delay

        def new_resource(self, args: Any) -> tuple[str | None, dict[str, Any]]:
            Registration = _test_engine().Registration  # noqa: N806
            key = f"{args.typ}::{args.name}"
            saved = self.state["resources"].get(key)
            if saved is not None:
                self._pending.pop((args.typ, args.name), None)
                reg = Registration(args.typ, args.name, bool(args.custom), args.inputs)
                reg.id, reg.outputs = saved["id"], saved["outputs"]
                self.registrations.append(reg)
                self.on_output(f"    {args.typ} {args.name} unchanged")
                return saved["id"], saved["outputs"]
            self.on_output(f" +  {args.typ} {args.name} creating")
            if args.custom and self.step_delay:
                time.sleep(self.step_delay)
            id_, outputs = super().new_resource(args)
            self.save(key, {"id": id_, "outputs": outputs})
            self.on_output(f" +  {args.typ} {args.name} created")
            return id_, outputs

    return StatefulEngine


def _StatefulEngine(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (a class, built lazily)
    # tests.engine imports pulumi's mock runtime; only the child process needs it.
    return _make_stateful_engine()(*args, **kwargs)


def make_deployer(options: Mapping[str, Any]) -> Deployer:
    backend = str(options["backend_url"])
    if options["deployer"] == "test-engine":
        parts = urlsplit(backend)
        base = Path(parts.path) if parts.scheme == "file" else ROOT / ".pulumi"
        return TestEngineDeployer(base / "test-engine", step_delay=float(options["step_delay"]))
    return AutomationDeployer(
        backend_url=backend,
        passphrase=options.get("passphrase"),
        passphrase_file=options.get("passphrase_file"),
    )


# -- the child process -------------------------------------------------------------------------


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
    """Runs one `up`/`destroy` in `python -m service.deployer`; returns the outputs.

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
        "service.deployer",
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
        message = f"{type(exc).__name__}: {_last_lines(str(exc), 5)}"
        result = {"ok": False, "error": message, "transient": False}
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
