"""The real deployer: the Pulumi Automation API over a work directory of the worker's own.

Runs inside the deployment's child process (service.child); the Pulumi CLI does the work. The
work directory (`CITRUS_STATE_DIR/work`) holds a `Pulumi.yaml` made from the project's, whose
`main` is the program's directory and whose `virtualenv` is this interpreter's, and each stack's
`Pulumi.<stack>.yaml`: nothing is written into the program's directory, and a checkout needs no
`.venv` of its own. A stack's file there is a cache, made anew for every operation from the
deployment's config; its passphrase salt comes from the state backend, which every machine
shares (PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER: the CLI then takes the salt the checkpoint
keeps, pulumi/pulumi `pkg/cmd/pulumi/stack/secrets.go`), so any worker on any machine decrypts
every stack the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from citrus_deploy.engine.deployer import (
    PROGRAM_FAILED_FALLBACK,
    DeployError,
    OnOutput,
    StackConfig,
    last_lines,
    looks_transient,
    preview_result,
    refresh_result,
)
from citrus_deploy.engine.events import EngineEvents, StepCollector
from citrus_deploy.engine.repair import pending_operations_error, repair_steps
from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.program.config import DO_TOKEN_ENV, ENV_FALLBACKS
from citrus_deploy.settings import PROJECT

log = logging.getLogger("citrus.automation")

_EXIT_CODE = re.compile(r"^\s*code: (-?\d+)", re.MULTILINE)


def _secret_env_names() -> dict[str, str]:
    """Secret config key -> the environment variable the program reads it from instead."""
    names = {f"{PROJECT}:{key}": env for key, env in ENV_FALLBACKS.items()}
    names["digitalocean:token"] = DO_TOKEN_ENV[0]
    return names


def write_work_dir(work_dir: Path, program_dir: Path = PROJECT_DIR) -> Path:
    """The work directory's `Pulumi.yaml`: the project's, with `main` the program's directory
    and `virtualenv` this interpreter's environment (both absolute, as the CLI allows:
    getPwdMain in pkg/engine/project.go, resolveVirtualEnvironmentPath in
    sdk/python/toolchain/pip.go). Rewritten only when it changes; returns its path."""
    project = yaml.safe_load((program_dir / "Pulumi.yaml").read_text())
    project["main"] = str(program_dir)
    options = {"toolchain": "pip", "virtualenv": sys.prefix}
    project["runtime"] = {"name": "python", "options": options}
    text = (
        f"# Made by citrus-deploy from {program_dir / 'Pulumi.yaml'}; rewritten at each "
        "deployment.\n" + yaml.safe_dump(project, sort_keys=False)
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "Pulumi.yaml"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def config_json(config: dict[str, Any]) -> str:
    """`pulumi config set-all --json`: a string as it is, a list or map as an object value,
    so that the CLI types it as the project declares (`{"value": <JSON text>, "objectValue":
    ...}`, pkg/cmd/pulumi/config/config.go newConfigSetAllCmd)."""
    entries: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, str):
            entries[key] = {"value": value, "secret": False}
        elif isinstance(value, bool | int | float):
            entries[key] = {"value": json.dumps(value), "secret": False}
        else:
            entries[key] = {"value": json.dumps(value), "objectValue": value, "secret": False}
    return json.dumps(entries)


class _Stop:
    """A stop asked for once and remembered for the whole deployment. It reaches the CLI as
    SIGTERM only while the CLI's engine runs, when the CLI handles it (finishes its in-flight
    steps, saves the checkpoint, releases the lock: pkg/backend/cancellation_scope.go);
    outside that window a SIGTERM would kill the CLI and could leave the stack's lock. Between
    CLI calls it stops the deployment before the next one."""

    def __init__(self) -> None:
        self.requested = False
        self._engine_running = False
        self._delivered = False
        self._lock = threading.RLock()  # request() runs in a signal handler on the main thread

    def request(self) -> None:
        with self._lock:
            self.requested = True
            self._deliver()

    def engine(self, running: bool) -> None:
        with self._lock:
            self._engine_running = running
            if running:
                self._deliver()

    def operation(self) -> None:
        """A new CLI operation starts: raises if a stop came first."""
        with self._lock:
            self._engine_running = self._delivered = False
            if self.requested:
                raise DeployError(
                    "stopped before the next pulumi operation started; nothing more was changed",
                    transient=True,
                )

    def _deliver(self) -> None:
        if self.requested and self._engine_running and not self._delivered:
            self._delivered = True
            for pid in _child_pids(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


class AutomationDeployer:
    """Pulumi Automation API on a work directory of its own (see the module docstring).

    State goes to PULUMI_BACKEND_URL (file://, s3://, postgres://, ...). Plain config is set in
    full, typed, before every operation, so any worker on any machine can run any stack.
    Secret values never go into stack config: the Automation API would set them with `pulumi
    config set-all --secret key=value`, which shows them in the process list. They reach the CLI
    (and the program and its providers, which inherit its environment) as the environment
    variables the program falls back to (GITHUB_TOKEN, DATABASE_URL, DIGITALOCEAN_TOKEN); the
    program wraps them as secrets before they reach the engine.
    """

    def __init__(
        self,
        *,
        backend_url: str,
        work_dir: Path,
        passphrase: str | None = None,
        passphrase_file: str | None = None,
        program_dir: Path = PROJECT_DIR,
    ) -> None:
        self.work_dir = work_dir
        self.program_dir = program_dir
        self.env = {
            "PULUMI_BACKEND_URL": backend_url,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER": "true",
        }
        if passphrase:
            self.env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
        if passphrase_file:
            self.env["PULUMI_CONFIG_PASSPHRASE_FILE"] = passphrase_file
        parts = urlsplit(backend_url)
        if parts.scheme == "file":
            Path(parts.path).mkdir(parents=True, exist_ok=True)
        self._stop = _Stop()

    def _split(self, config: StackConfig) -> tuple[dict[str, Any], dict[str, str]]:
        """(plain config for `config set-all --json`, environment for the secrets)."""
        env_names = _secret_env_names()
        plain: dict[str, Any] = {}
        env: dict[str, str] = {}
        for key, value in config.items():
            if not value.secret:
                plain[key] = value.value
            elif key in env_names:
                env[env_names[key]] = value.text
            else:
                raise DeployError(
                    f"secret config key {key} has no environment variable to travel in; "
                    "it would have to go on the pulumi command line"
                )
        return plain, env

    def _options(self, secrets_env: dict[str, str]) -> Any:
        from pulumi import automation as auto

        return auto.LocalWorkspaceOptions(
            env_vars={**self.env, **secrets_env}, secrets_provider="passphrase"
        )

    def cancel(self) -> None:
        """The deployment is to stop (see _Stop): called from a signal handler."""
        self._stop.request()

    @contextlib.contextmanager
    def _stack(
        self, stack: str, config: StackConfig, *, create: bool
    ) -> Iterator[tuple[Any, bool]]:
        """(the stack, whether it was made now): selected, or created when `create`, its
        settings file made anew with the deployment's config; (None, False) when it does not
        exist and `create` is false."""
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        write_work_dir(self.work_dir, self.program_dir)
        settings = self.work_dir / f"Pulumi.{stack}.yaml"
        settings.unlink(missing_ok=True)  # a cache: nothing of an earlier deployment lingers
        work_dir, opts = str(self.work_dir), self._options(secrets_env)
        created = False
        with _translated(stack):
            self._stop.operation()
            try:
                ws_stack = auto.select_stack(stack_name=stack, work_dir=work_dir, opts=opts)
            except auto.StackNotFoundError:
                if not create:
                    yield None, False
                    return
                self._stop.operation()
                ws_stack = auto.create_stack(stack_name=stack, work_dir=work_dir, opts=opts)
                created = True
            self._stop.operation()
            ws_stack.set_all_config_json(config_json(plain))
            yield ws_stack, created

    def _events(self, on_output: OnOutput, kind: type[EngineEvents] = EngineEvents) -> Any:
        self._stop.operation()
        return kind(on_output, self._stop.engine)

    def _refuse_pending(self, ws_stack: Any, stack: str) -> None:
        """A killed update's pending operations: an `up` now would only warn and create again."""
        self._stop.operation()
        deployment = ws_stack.export_stack().deployment or {}
        pending = deployment.get("pending_operations") or []
        if pending:
            raise pending_operations_error(stack, pending)

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        with self._stack(stack, config, create=True) as (ws_stack, _created):
            self._refuse_pending(ws_stack, stack)
            events = self._events(on_output)
            with _failures(stack, "up", events):
                result = ws_stack.up(on_output=on_output, on_event=events)
            return {key: out.value for key, out in result.outputs.items() if not out.secret}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        from pulumi import automation as auto

        with self._stack(stack, config, create=False) as (ws_stack, _created):
            if ws_stack is None:
                on_output(f"stack {stack} does not exist: nothing to destroy")
                return
            self._refuse_pending(ws_stack, stack)
            # Run the program: without it the engine deletes through the explicit DigitalOcean
            # provider's inputs stored in state, i.e. the token of the last `up`, which fails
            # once that token is rotated (pulumi/pulumi#4981, #18740).
            events = self._events(on_output)
            try:
                with _failures(stack, "destroy", events):
                    ws_stack.destroy(on_output=on_output, on_event=events, run_program=True)
            except _ProgramFailed:
                # Only a program that cannot run (auto.RuntimeError: an unhandled exception);
                # any other failure (config, network, a provider) is the deployment's error.
                on_output(f"the program could not run for the destroy: {PROGRAM_FAILED_FALLBACK}")
                events = self._events(on_output)
                with _failures(stack, "destroy", events):
                    ws_stack.destroy(on_output=on_output, on_event=events)
            self._stop.operation()
            with _translated(stack):
                try:
                    ws_stack.workspace.remove_stack(stack)
                except auto.CommandError as exc:
                    raise DeployError(f"pulumi stack rm failed: {_cli_error(str(exc))}") from None
            (self.work_dir / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)

    def preview(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """`pulumi preview` with engine events. The CLI previews only a stack that exists: a new
        one is created for the preview and removed after it, so the check leaves nothing
        behind; the queue runs no `up` of it meanwhile (same lock)."""
        from pulumi import automation as auto

        with self._stack(stack, config, create=True) as (ws_stack, created):
            steps = self._events(on_output, StepCollector)
            try:
                with _failures(stack, "preview", steps):
                    ws_stack.preview(on_output=on_output, on_event=steps)
            finally:
                if created:
                    with contextlib.suppress(auto.CommandError):
                        ws_stack.workspace.remove_stack(stack)
                    (self.work_dir / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
        return preview_result(steps.steps(), steps.summary)

    def preview_refresh(
        self, stack: str, config: StackConfig, on_output: OnOutput
    ) -> dict[str, Any]:
        """`pulumi refresh --preview-only` with engine events: the providers read every
        resource, nothing is written (the DIY backend takes no lock for it either)."""
        with self._stack(stack, config, create=False) as (ws_stack, _created):
            if ws_stack is None:
                raise DeployError(f"error: no stack named '{stack}' found: nothing to refresh")
            steps = self._events(on_output, StepCollector)
            with _failures(stack, "refresh", steps):
                ws_stack.preview_refresh(on_output=on_output, on_event=steps)
        return refresh_result(steps.steps())


class _ProgramFailed(DeployError):
    """The program raised (the CLI's output says it failed with an unhandled exception)."""


@contextlib.contextmanager
def _failures(stack: str, kind: str, events: EngineEvents) -> Iterator[None]:
    """A failed CLI operation as a DeployError, told from what the CLI says where it says it:
    a step's error is only in the engine's diagnostics (stdout and the event log; stderr is
    empty, exit code 1); a stop is `update canceled` under the stack; a CLI killed by a signal
    outside its engine leaves no words, and may leave the stack's lock."""
    from pulumi import automation as auto

    try:
        yield
    except auto.ConcurrentUpdateError:
        raise
    except auto.CommandError as exc:
        raw = str(exc)
        found = _EXIT_CODE.search(raw)
        code = int(found.group(1)) if found else 1
        text = events.error_text() or _cli_error(raw)
        if code < 0 and kind in ("up", "destroy"):
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise DeployError(
                f"the pulumi CLI was killed by {name} outside its engine (while it took or "
                "released the stack's lock, or wrote its history): the stack may be locked",
                repair=repair_steps(stack),
            ) from None
        if code < 0:
            raise DeployError(f"the pulumi {kind} was stopped", transient=True) from None
        if any(message.endswith(" canceled") for _urn, message in events.errors):
            raise DeployError(
                f"{text}\n(stopped: the CLI finished its steps in flight, saved the checkpoint "
                "and released the lock)",
                transient=True,
            ) from None
        if isinstance(exc, auto.RuntimeError):
            raise _ProgramFailed(f"pulumi failed: {text}") from None
        raise DeployError(f"pulumi failed: {text}", transient=looks_transient(text)) from None


def _cli_error(raw: str) -> str:
    """The CLI's own `error:` lines from str(CommandError) (stderr), else its last lines."""
    _, found, stderr = raw.partition("\n stderr: ")
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if found and errors:
        return "\n".join(errors)
    return last_lines(raw)


def _child_pids(parent: int) -> list[int]:
    """The direct children of `parent` (Linux /proc): the CLI the Automation API started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def _translated(stack: str) -> Iterator[None]:
    """Automation API errors -> DeployError, with the CLI's own words (it masks secrets)."""
    from pulumi import automation as auto

    try:
        yield
    except auto.ConcurrentUpdateError as exc:
        # The queue runs one operation per stack at a time: the lock is not another deployment's
        # but a killed update's (or someone's running pulumi by hand). Retrying would only
        # spend every attempt on it.
        raise DeployError(
            "the stack is locked, and no deployment of the service holds the lock: a killed "
            f"update left it, or someone runs pulumi on it by hand: {_cli_error(str(exc))}",
            repair=repair_steps(stack),
        ) from None
    except auto.CommandError as exc:
        text = _cli_error(str(exc))
        raise DeployError(f"pulumi failed: {text}", transient=looks_transient(text)) from None
