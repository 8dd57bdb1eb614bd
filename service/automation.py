"""The real deployer: the Pulumi Automation API on the project directory (`work_dir` = root).

Runs inside the deployment's child process (service.child); the Pulumi CLI does the work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.deployer import (
    ROOT,
    DeployError,
    OnOutput,
    StackConfig,
    last_lines,
    looks_transient,
)


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
            f"lock: `pulumi cancel`): {last_lines(str(exc))}",
            transient=True,
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
