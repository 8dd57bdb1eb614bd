"""The real deployer: the Pulumi Automation API on the project directory (`work_dir` = root).

Runs inside the deployment's child process (service.child); the Pulumi CLI does the work.
Also installs the resource plugins a worker needs before it takes a job
(`python -m service.automation`, run by install_pinned_plugins).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from citrus.errors import CitrusError
from service.deployer import (
    PROGRAM_FAILED_FALLBACK,
    ROOT,
    CheckStep,
    DeployError,
    OnOutput,
    StackConfig,
    last_lines,
    looks_transient,
    preview_result,
    refresh_result,
)
from service.repair import pending_operations_error, repair_steps

log = logging.getLogger("citrus.automation")

# The program's resource plugins, by the Python package that pins each one's version.
PLUGIN_PACKAGES = ("pulumi_digitalocean", "pulumi_random")
# A first install downloads both plugins (tens of MB); past this the worker gives up, saying so.
PLUGIN_INSTALL_TIMEOUT = 900.0


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

    def cancel(self) -> None:
        """SIGTERM to the `pulumi` CLI this process runs (not to its plugins: the CLI finishes
        its in-flight steps, saves the checkpoint and releases the lock, then exits)."""
        for pid in _child_pids(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    @staticmethod
    def _refuse_pending(ws_stack: Any, stack: str) -> None:
        """A killed update's pending operations: an `up` now would only warn and create again."""
        deployment = ws_stack.export_stack().deployment or {}
        pending = deployment.get("pending_operations") or []
        if pending:
            raise pending_operations_error(stack, pending)

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        work_dir, opts = str(self.work_dir), self._options(secrets_env)
        with _translated(stack):
            try:
                ws_stack = auto.select_stack(stack_name=stack, work_dir=work_dir, opts=opts)
                self._refuse_pending(ws_stack, stack)
            except auto.StackNotFoundError:
                self._refuse_foreign_settings(stack)
                ws_stack = auto.create_stack(stack_name=stack, work_dir=work_dir, opts=opts)
            self._configure(ws_stack, config, plain)
            result = ws_stack.up(on_output=on_output, on_event=_event_printer(on_output))
            return {key: out.value for key, out in result.outputs.items() if not out.secret}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        with _translated(stack):
            try:
                ws_stack = auto.select_stack(
                    stack_name=stack, work_dir=str(self.work_dir), opts=self._options(secrets_env)
                )
            except auto.StackNotFoundError:
                on_output(f"stack {stack} does not exist: nothing to destroy")
                return
            self._refuse_pending(ws_stack, stack)
            self._configure(ws_stack, config, plain)
            # Run the program: without it the engine deletes through the explicit DigitalOcean
            # provider's inputs stored in state, i.e. the token of the last `up`, which fails
            # once that token is rotated (pulumi/pulumi#4981, #18740).
            try:
                ws_stack.destroy(
                    on_output=on_output, on_event=_event_printer(on_output), run_program=True
                )
            except auto.CommandError as exc:
                text = last_lines(str(exc))
                if isinstance(exc, auto.ConcurrentUpdateError) or looks_transient(text):
                    raise
                on_output(f"the program could not run for the destroy: {PROGRAM_FAILED_FALLBACK}")
                ws_stack.destroy(on_output=on_output, on_event=_event_printer(on_output))
            ws_stack.workspace.remove_stack(stack)

    def preview(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """`pulumi preview` with engine events. The CLI previews only a stack that exists: a new
        one is created for the preview and removed after it (with its settings file), so the
        check leaves nothing behind; the queue runs no `up` of it meanwhile (same lock)."""
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        work_dir, opts = str(self.work_dir), self._options(secrets_env)
        steps = StepCollector(on_output)
        with _translated(stack):
            created = False
            try:
                ws_stack = auto.select_stack(stack_name=stack, work_dir=work_dir, opts=opts)
            except auto.StackNotFoundError:
                self._refuse_foreign_settings(stack)
                ws_stack = auto.create_stack(stack_name=stack, work_dir=work_dir, opts=opts)
                created = True
            try:
                self._configure(ws_stack, config, plain)
                ws_stack.preview(on_output=on_output, on_event=steps)
            finally:
                if created:
                    ws_stack.workspace.remove_stack(stack)
        return preview_result(steps.steps())

    def preview_refresh(
        self, stack: str, config: StackConfig, on_output: OnOutput
    ) -> dict[str, Any]:
        """`pulumi refresh --preview-only` with engine events: the providers read every
        resource, nothing is written (the DIY backend takes no lock for it either)."""
        from pulumi import automation as auto

        plain, secrets_env = self._split(config)
        steps = StepCollector(on_output)
        with _translated(stack):
            try:
                ws_stack = auto.select_stack(
                    stack_name=stack, work_dir=str(self.work_dir), opts=self._options(secrets_env)
                )
            except auto.StackNotFoundError:
                raise DeployError(
                    f"error: no stack named '{stack}' found: nothing to refresh"
                ) from None
            self._configure(ws_stack, config, plain)
            ws_stack.preview_refresh(on_output=on_output, on_event=steps)
        return refresh_result(steps.steps())


class StepCollector:
    """The steps of a preview or refresh preview, from the engine's `resOutputsEvent`s.

    Their metadata carries the step's op (for a refresh, the result of the read: update,
    delete or same, where `resourcePreEvent` says "refresh"), urn, type, the changed keys and
    the old and new state, secrets shown as "[secret]" by the CLI. A provider that names no
    changed keys (the dynamic provider host never does) gets the keys the CLI itself would
    show: the inputs that differ (preview), or the inputs whose output value differs (refresh).
    Error diagnostics and failed steps still reach `on_output`.
    """

    def __init__(self, on_output: OnOutput) -> None:
        self._printer = _event_printer(on_output)
        self._steps: dict[str, CheckStep] = {}

    def __call__(self, event: Any) -> None:
        self._printer(event)
        outputs = getattr(event, "res_outputs_event", None)
        if outputs is None:
            return
        meta = outputs.metadata
        op = str(getattr(meta.op, "value", meta.op))
        old, new = meta.old, meta.new
        old_outputs = dict(old.outputs or {}) if old is not None else None
        new_outputs = dict(new.outputs or {}) if new is not None else None
        keys = list(meta.diffs or []) or list(meta.detailed_diff or {})
        if not keys and op in ("update", "replace"):
            keys = _fallback_keys(old, new, old_outputs, new_outputs)
        top = sorted({key.split(".")[0].split("[")[0] for key in keys})
        self._steps[meta.urn] = CheckStep(meta.urn, meta.type, op, top, old_outputs, new_outputs)

    def steps(self) -> list[CheckStep]:
        return list(self._steps.values())


def _fallback_keys(
    old: Any, new: Any, old_outputs: dict[str, Any] | None, new_outputs: dict[str, Any] | None
) -> list[str]:
    old_inputs = dict(old.inputs or {}) if old is not None else {}
    new_inputs = dict(new.inputs or {}) if new is not None else {}
    if old_outputs is not None and new_outputs is not None and old_inputs == new_inputs:
        # a refresh: the inputs stay, the read outputs moved
        return [
            k
            for k in old_inputs
            if not k.startswith("__") and old_outputs.get(k) != new_outputs.get(k)
        ]
    keys = {k for k in {*old_inputs, *new_inputs} if not k.startswith("__")}
    return [k for k in keys if old_inputs.get(k) != new_inputs.get(k)]


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
def _translated(stack: str) -> Any:
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
            f"update left it, or someone runs pulumi on it by hand: {last_lines(str(exc))}",
            repair=repair_steps(stack),
        ) from None
    except auto.CommandError as exc:
        text = last_lines(str(exc))
        raise DeployError(f"pulumi failed: {text}", transient=looks_transient(text)) from None


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


# -- resource plugins, installed when a worker starts ----------------------------------------


class PluginInstallError(CitrusError):
    """A resource plugin could not be installed: the worker must not start without it."""


@dataclass(frozen=True)
class Plugin:
    name: str  # "digitalocean"
    version: str  # "4.84.1", without the CLI's "v"
    package: str  # the Python package that pins it: "pulumi_digitalocean"


def pinned_plugins(packages: Sequence[str] = PLUGIN_PACKAGES) -> list[Plugin]:
    """Each package's resource plugin at the version the installed package pins.

    A pulumi_<name> package ships `pulumi-plugin.json` ({"resource": true, "name", "version"}),
    which the Python language host reads to tell the engine which plugin to load; without it,
    the plugin is <name> at the distribution's own version, the one its resources ask for.
    """
    found = []
    for package in packages:
        try:
            pinned = json.loads((resources.files(package) / "pulumi-plugin.json").read_text())
            name, version = str(pinned["name"]), str(pinned["version"])
        except (ModuleNotFoundError, FileNotFoundError, KeyError, ValueError):
            name = package.removeprefix("pulumi_")
            try:
                version = metadata.version(package.replace("_", "-"))
            except metadata.PackageNotFoundError:
                raise PluginInstallError(
                    f"the Python package {package} is not installed, and the program needs it "
                    "(pip install -r requirements.txt)"
                ) from None
        found.append(Plugin(name=name, version=version.removeprefix("v"), package=package))
    return found


def install_pinned_plugins(timeout: float = PLUGIN_INSTALL_TIMEOUT) -> list[Plugin]:
    """Installs the pinned plugins before a worker takes a job; raises PluginInstallError.

    The first `up` under a PULUMI_HOME would otherwise download them, and a worker that cannot
    (offline, proxy) would fail every deployment as if the deployment were at fault. The CLI
    runs in `python -m service.automation`, whose environment lacks the worker's own secrets
    (service.child.WORKER_ONLY_ENV) as a deployment's does; PULUMI_HOME and proxies pass.
    """
    from service.child import WORKER_ONLY_ENV

    plugins = pinned_plugins()
    env = {name: value for name, value in os.environ.items() if name not in WORKER_ONLY_ENV}
    command = [sys.executable, "-m", "service.automation"]
    command += [f"{plugin.name}={plugin.version}={plugin.package}" for plugin in plugins]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise PluginInstallError(
            f"installing the Pulumi resource plugins ({_listed(plugins)}) took more than "
            f"{timeout:.0f}s; the worker does not start without them"
        ) from None
    if done.returncode != 0:
        raise PluginInstallError(
            last_lines(done.stderr, 8) or f"the plugin installer exited with {done.returncode}"
        )
    log.info("resource plugins ready: %s", _listed(plugins))
    return plugins


def install_plugins(plugins: Sequence[Plugin], work_dir: Path = ROOT) -> None:
    """`pulumi plugin install resource <name> v<version>` for each, through the Automation API.

    The CLI gets this process's environment: call it through install_pinned_plugins.
    """
    from pulumi import automation as auto

    try:
        workspace = auto.LocalWorkspace(
            work_dir=str(work_dir), env_vars={"PULUMI_SKIP_UPDATE_CHECK": "true"}
        )
    except FileNotFoundError:
        raise PluginInstallError(
            "no `pulumi` CLI on PATH: a worker with CITRUS_DEPLOYER=automation runs it"
        ) from None
    for plugin in plugins:
        try:
            workspace.install_plugin(plugin.name, f"v{plugin.version}")
        except auto.CommandError as exc:
            # str(exc) is " code: ...\n stdout: ...\n stderr: ...": the error is in stderr.
            text = str(exc)
            _, found, stderr = text.partition("\n stderr: ")
            raise PluginInstallError(
                f"cannot install the Pulumi resource plugin {plugin.name} v{plugin.version} "
                f"(the version {plugin.package} pins); the worker does not start without it. "
                f"The CLI said:\n{last_lines(stderr if found else text, 3)}"
            ) from None


def _listed(plugins: Sequence[Plugin]) -> str:
    return ", ".join(f"{plugin.name} v{plugin.version}" for plugin in plugins)


def _install_main(argv: Sequence[str]) -> int:
    """`python -m service.automation name=version=package ...`: the plugin installer process."""
    plugins = [Plugin(*word.split("=", 2)) for word in argv]
    try:
        install_plugins(plugins)
    except PluginInstallError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # reported in one line, not as a traceback
        print(
            f"installing the Pulumi resource plugins ({_listed(plugins)}) failed: "
            f"{type(exc).__name__}: {last_lines(str(exc), 3)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_install_main(sys.argv[1:]))
