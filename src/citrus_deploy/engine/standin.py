"""The stand-in deployer (CITRUS_DEPLOYER=test-engine): the program under `standin.engine`.

For machines without a Pulumi CLI or a cloud account (the demo, the service tests): the same
program, the real row provider in a real provider host against PostgreSQL, DigitalOcean faked.
It behaves towards the worker as AutomationDeployer does: a stack left locked or with pending
operations by a killed update needs an operator; SIGTERM stops it after its step in flight;
destroy runs the program first (`--run-program`), so a rotated DigitalOcean token is the one
used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from citrus_deploy.engine.deployer import (
    PROGRAM_FAILED_FALLBACK,
    CheckStep,
    DeployError,
    OnOutput,
    StackConfig,
    looks_transient,
    preview_result,
    refresh_result,
)
from citrus_deploy.engine.repair import pending_operations_error, repair_steps
from citrus_deploy.standin.engine import Cancelled, Engine, EngineError, StackLocked
from citrus_deploy.standin.engine import StackConfig as EngineConfig


class StandInDeployer:
    """Keeps each stack's checkpoint (mode 0600, secrets sealed with the passphrase) and the
    fake cloud under `state_dir`."""

    def __init__(
        self, state_dir: Path, *, step_delay: float = 0.0, passphrase: str | None = None
    ) -> None:
        self.state_dir = state_dir
        self.step_delay = step_delay
        self.passphrase = passphrase
        self.engine: Any = None  # the running operation's engine: request_cancel() on SIGTERM

    def _engine(self, on_output: OnOutput) -> Any:
        self.engine = Engine(
            self.state_dir,
            on_output=on_output,
            step_delay=self.step_delay,
            passphrase=self.passphrase,
        )
        return self.engine

    @staticmethod
    def _config(config: StackConfig) -> Any:
        return EngineConfig(
            {k: v.text for k, v in config.items()},
            frozenset(k for k, v in config.items() if v.secret),
        )

    def cancel(self) -> None:
        """SIGTERM: finish the step in flight, then stop, as the CLI does."""
        if self.engine is not None:
            self.engine.request_cancel()

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        engine = self._engine(on_output)
        self._refuse_pending(engine, stack)
        result = self._run(stack, lambda: engine.up(stack, self._config(config)))
        return {k: v for k, v in result.outputs.items() if isinstance(v, str | int | float | bool)}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        engine = self._engine(on_output)
        if not engine.state_path(stack).exists():
            on_output(f"stack {stack} does not exist: nothing to destroy")
            return
        self._refuse_pending(engine, stack)
        try:
            self._run(stack, lambda: engine.destroy(stack, self._config(config), run_program=True))
        except DeployError as exc:
            if exc.transient or exc.repair is not None:
                raise
            on_output(f"the program could not run for the destroy: {PROGRAM_FAILED_FALLBACK}")
            self._run(stack, lambda: engine.destroy(stack, self._config(config)))
        engine.state_path(stack).unlink(missing_ok=True)  # `pulumi stack rm`

    def preview(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """`pulumi preview`: no lock, no checkpoint written; a new stack is all creates."""
        engine = self._engine(on_output)
        result = self._run(stack, lambda: engine.preview(stack, self._config(config)))
        return preview_result([CheckStep(s.urn, s.type, s.op, s.diffs) for s in result.steps])

    def preview_refresh(
        self, stack: str, config: StackConfig, on_output: OnOutput
    ) -> dict[str, Any]:
        """`pulumi refresh --preview-only`: no lock (as the DIY backend), nothing written."""
        engine = self._engine(on_output)
        if not engine.state_path(stack).exists():
            raise DeployError(f"error: no stack named '{stack}' found: nothing to refresh")
        result = self._run(
            stack, lambda: engine.refresh(stack, self._config(config), preview_only=True)
        )
        return refresh_result(
            [CheckStep(s.urn, s.type, s.op, s.diffs, s.old, s.new) for s in result.steps]
        )

    @staticmethod
    def _refuse_pending(engine: Any, stack: str) -> None:
        pending = engine.export(stack).get("pending_operations") or []
        if pending:
            raise pending_operations_error(stack, pending)

    @staticmethod
    def _run(stack: str, operation: Any) -> Any:
        try:
            return operation()
        except StackLocked as exc:
            # The queue runs one operation per stack at a time: a lock is a killed update's
            # (or an operator's running `pulumi` by hand), never another deployment's.
            raise DeployError(
                f"{exc}\nNo deployment of the service holds it: a killed update left it, or "
                "someone is running pulumi on this stack by hand",
                repair=repair_steps(stack),
            ) from None
        except Cancelled as exc:
            raise DeployError(f"{exc} (stopped after its step in flight)", transient=True) from None
        except EngineError as exc:
            text = str(exc)
            raise DeployError(text, transient=looks_transient(text)) from None
