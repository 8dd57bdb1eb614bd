"""The stand-in for the Pulumi engine, the one boundary that cannot run on these machines.

No Pulumi CLI can be installed here. This engine runs the real program (`__main__.py`) under the
SDK's own mock runtime, which plays the language host, and does what the engine does with each
resource registration:
- every call for a dynamic resource (our `db.provider` rows) goes to a real `python -m
  pulumi.dynamic` process, started and spoken to over gRPC as the engine does
  (`standin.provider_host`); the row provider runs there, against PostgreSQL;
- random and DigitalOcean, the plugins we cannot run, are the in-process fakes of
  `standin.fakes` (DigitalOcean's droplets live in a small "cloud" file);
- it keeps a checkpoint per stack between runs, with secrets marked, pending operations and a
  lock file, as the DIY backend does, and models the engine's steps: preview (unknowns on the
  wire; no Create or Update for a provider without preview support), create, same (Diff says no
  change: the old outputs, old `__provider` included, are kept), update, replace
  (create-before-delete), deletes of what the program no longer registers, refresh (Read from
  the stored outputs with the stored provider), destroy from the checkpoint alone (reverse
  order) or with the program run first (`--run-program`: explicit providers take the new config).

Secrets in the checkpoint are sealed as Pulumi's passphrase secrets provider seals them
(`standin.sealing`), and the checkpoint is the DIY backend's file (`{"version": 3, "checkpoint":
{"stack", "latest": {manifest, secrets_providers, resources, pending_operations}}}`,
pulumi/pulumi `pkg/backend/diy/state.go`). Default providers are resources of their own, created
before the first resource of their package, and their steps are internal (in the event stream,
not in the summary), as `pkg/resource/deploy/default_providers.go` makes them. `on_event` gets
the engine events the CLI writes to `--event-log` (`sdk/go/common/apitype/events.go`): step pre
and outputs events, failures, diagnostics, the summary. What it does not do, and the real engine
does: run steps in parallel (it runs one at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import runpy
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import empty_pb2
from pulumi.runtime import mocks, settings
from pulumi.runtime.proto import resource_pb2

from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.standin import deletions
from citrus_deploy.standin.model import (
    PROJECT,
    Cancelled,
    EngineError,
    OnEvent,
    OnOutput,
    Registration,
    Result,
    StackConfig,
    StackLocked,
    Step,
    diagnostic,
    stack_config,
)
from citrus_deploy.standin.operation import Operation
from citrus_deploy.standin.sealing import (
    INCORRECT_PASSPHRASE,
    Crypter,
    WrongPassphrase,
    unseal,
)
from citrus_deploy.standin.wire import (
    to_struct,
)

__all__ = [  # the model's names that callers of the engine use
    "PROJECT",
    "Cancelled",
    "Engine",
    "EngineError",
    "Registration",
    "Result",
    "StackConfig",
    "StackLocked",
    "Step",
    "stack_config",
]


class Engine:
    """See the module docstring. One operation at a time per process (Pulumi's runtime is
    process-global); several processes may share `state_dir`, each stack guarded by its lock."""

    def __init__(
        self,
        state_dir: Path,
        *,
        project_dir: Path = PROJECT_DIR,
        project: str = PROJECT,
        on_output: OnOutput | None = None,
        on_event: OnEvent | None = None,
        step_delay: float = 0.0,
        host_env: dict[str, str] | None = None,
        passphrase: str | None = None,
        secrets_state: str | None = None,
        locking: bool = True,
        cloud_file: Path | None = None,
    ) -> None:
        """`secrets_state`: the operation's secrets manager (`v1:<salt>:<check>`), which seals
        what it writes; the checkpoint is read with its own. `locking=False`: the caller (the CLI
        stand-in) takes the stack's lock itself, where the DIY backend keeps it."""
        self.state_dir = state_dir
        self.project_dir = project_dir
        self.project = project
        self.on_output = on_output or (lambda _line: None)
        self.on_event = on_event or (lambda _event: None)
        self.step_delay = step_delay
        self.host_env = host_env
        self.passphrase = passphrase  # seals the checkpoint's secrets; export() needs none
        self.secrets_state = secrets_state
        self.locking = locking
        self.cloud_file = cloud_file or state_dir / "digitalocean.json"
        self._cancel = threading.Event()

    # -- operations --------------------------------------------------------------------------

    def preview(self, stack: str, config: StackConfig) -> Result:
        self.on_output(f"Previewing update ({stack}):")
        with self._operation(stack, config, "preview", lock=False) as op:
            self._run_program(op, dry_run=True)
            deletions.delete_unregistered(op)
        return op.result

    def up(self, stack: str, config: StackConfig) -> Result:
        self.on_output(f"Updating ({stack}):")
        with self._operation(stack, config, "up") as op:
            op.clear_pending_operations()
            self._run_program(op, dry_run=False)
            deletions.delete_unregistered(op)
        return op.result

    def refresh(self, stack: str, config: StackConfig, *, preview_only: bool = False) -> Result:
        """Reads every resource through its provider. `preview_only` (`pulumi refresh
        --preview-only`): reports what a refresh would change and changes nothing, not even the
        checkpoint; like the DIY backend's preview-only refresh it takes no lock."""
        if preview_only:
            self.on_output(f"Previewing refresh ({stack}):")
            with self._operation(stack, config, "refresh-preview", lock=False) as op:
                deletions.refresh_all(op)
            return op.result
        self.on_output(f"Refreshing ({stack}):")
        with self._operation(stack, config, "refresh") as op:
            deletions.refresh_all(op)
        return op.result

    def destroy(self, stack: str, config: StackConfig, *, run_program: bool = False) -> Result:
        self.on_output(f"Destroying ({stack}):")
        with self._operation(stack, config, "destroy") as op:
            if run_program:
                op.mode = "destroy-program"
                self._run_program(op, dry_run=False)
            deletions.delete_all(op)
        return op.result

    def export(self, stack: str, *, show_secrets: bool = False) -> dict[str, Any]:
        """The stack's deployment, as `pulumi stack export [--show-secrets]` shows it: secrets
        as ciphertext, or decrypted with the passphrase (then with its "crypter")."""
        loaded = self.read_checkpoint(stack)
        if not show_secrets:
            return loaded
        return self._unsealed(stack, loaded)

    def read_checkpoint(self, stack: str) -> dict[str, Any]:
        """The checkpoint's `latest` deployment; an empty one when the stack has none."""
        path = self.state_path(stack)
        if not path.exists():
            return {"resources": [], "pending_operations": []}
        latest: dict[str, Any] = json.loads(path.read_text())["checkpoint"].get("latest") or {}
        latest.setdefault("resources", [])
        latest.setdefault("pending_operations", [])
        return latest

    def write_checkpoint(self, stack: str, deployment: dict[str, Any]) -> None:
        """Writes the checkpoint file atomically, mode 0600, in the DIY backend's layout."""
        data = {
            "version": 3,
            "checkpoint": {"stack": f"organization/{self.project}/{stack}", "latest": deployment},
        }
        path = self.state_path(stack)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
        tmp.replace(path)

    def _passphrase(self) -> str:
        if not self.passphrase:  # the CLI's own words
            raise EngineError(
                "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
                "PULUMI_CONFIG_PASSPHRASE_FILE environment variables"
            )
        return self.passphrase

    def _unsealed(self, stack: str, sealed: dict[str, Any]) -> dict[str, Any]:
        """Decrypted with the checkpoint's own secrets manager, as the CLI reads a checkpoint
        (pkg/backend/secrets/providers.go); a wrong passphrase shows only when a secret is
        decrypted (errorCrypter, pkg/secrets/passphrase/manager.go)."""
        state = ((sealed.get("secrets_providers") or {}).get("state") or {}).get("salt")
        crypter: Crypter | None = None
        try:
            if state:
                crypter = Crypter.from_state(self._passphrase(), state)
        except WrongPassphrase:
            crypter = None  # locked: an error only if a secret must be decrypted
        try:
            unsealed: dict[str, Any] = unseal(sealed, crypter or _LOCKED)
        except WrongPassphrase:
            raise EngineError(
                f"error: failed to decrypt: {INCORRECT_PASSPHRASE} (checkpoint of stack {stack})"
            ) from None
        unsealed["crypter"] = crypter
        return unsealed

    def locked(self, stack: str) -> bool:
        return self.lock_path(stack).exists()

    def request_cancel(self) -> None:
        """What SIGINT/SIGTERM does to the CLI: finish the step in flight, start no other,
        save the checkpoint, release the lock, fail with "update canceled"."""
        self._cancel.set()

    def state_path(self, stack: str) -> Path:
        return self.state_dir / f"{stack}.json"

    def lock_path(self, stack: str) -> Path:
        return self.state_dir / f"{stack}.lock"

    # -- machinery ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(
        self, stack: str, config: StackConfig, mode: str, *, lock: bool = True
    ) -> Iterator[Operation]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = lock and self.locking
        if lock:
            self._acquire(stack)
        started = time.monotonic()
        try:
            op = Operation(self, stack, config, mode)
        except BaseException:
            if lock:
                self.lock_path(stack).unlink(missing_ok=True)
            raise
        self.on_event({"preludeEvent": {"config": config.shown()}})
        failed: BaseException | None = None
        try:
            yield op
        except BaseException as exc:
            failed = exc
            raise
        finally:
            op.close()
            if lock:
                self.lock_path(stack).unlink(missing_ok=True)
            self._end(op, time.monotonic() - started, failed)
        summary = ", ".join(f"{n} {o}" for o, n in sorted(op.result.change_summary.items()))
        self.on_output(f"Resources: {summary or 'none'}")
        self.on_output(f"Duration: {time.monotonic() - started:.1f}s")

    def _end(self, op: Operation, seconds: float, failed: BaseException | None) -> None:
        """The engine's last events: the operation's outcome as a diagnostic under the stack
        when it failed (`update failed`, `update canceled`: deploymentExecutor.reportExecResult
        in pkg/resource/deploy/deployment_executor.go), the summary, then the cancel event the
        engine always ends with (pkg/engine/update.go)."""
        what = {"preview": "preview", "refresh-preview": "preview", "refresh": "refresh"}
        verb = what.get(op.mode, "destroy" if op.mode.startswith("destroy") else "update")
        if failed is not None:
            outcome = "canceled" if isinstance(failed, Cancelled) else "failed"
            self.on_event(diagnostic("", f"{verb} {outcome}"))
        summary = {
            "maybeCorrupt": False,
            "durationSeconds": int(seconds),
            "resourceChanges": op.result.change_summary,
            "PolicyPacks": {},
            "isPreview": op.preview,
            "result": "failed" if failed is not None else "succeeded",
        }
        self.on_event({"summaryEvent": summary})
        self.on_event({"cancelEvent": {}})

    def _acquire(self, stack: str) -> None:
        path = self.lock_path(stack)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise StackLocked(
                "error: the stack is currently locked by 1 lock(s). Either wait for the other "
                "process(es) to end or delete the lock file with `pulumi cancel`.\n"
                f"  file://{path}"
            ) from None
        with os.fdopen(fd, "w") as out:
            json.dump({"pid": os.getpid(), "timestamp": time.time()}, out)

    def _run_program(self, op: Operation, *, dry_run: bool) -> None:
        # Pulumi's runtime runs on the thread's current event loop; an earlier asyncio.run() in
        # this thread leaves none, and get_event_loop() then refuses to make one.
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
        monitor = _Monitor(op)
        settings.ROOT.set(None)  # a new Stack resource for this run, registered like any other
        pulumi.runtime.set_mocks(
            _NoMocks(), project=self.project, stack=op.stack, preview=dry_run, monitor=monitor
        )
        pulumi.runtime.set_all_config(op.config.values, sorted(op.config.secret_keys))

        @pulumi.runtime.test  # type: ignore[untyped-decorator]
        def program() -> None:
            cwd = os.getcwd()
            # The language host runs the program in its directory, first on sys.path.
            os.chdir(self.project_dir)
            sys.path.insert(0, str(self.project_dir))
            try:
                runpy.run_path(str(self.project_dir / "__main__.py"), run_name="__main__")
            finally:
                os.chdir(cwd)
                sys.path.remove(str(self.project_dir))
            # The language host registers the stack's outputs once the program has run; the
            # mock runtime registered them (empty) when it made the Stack, so again here.
            root = settings.get_root_resource()
            root._outputs_registered = False  # type: ignore[union-attr]
            root._finish()  # type: ignore[union-attr]

        try:
            program()
        except Exception as exc:
            if op.error is not None:
                raise op.error from None
            text = str(exc).strip() or type(exc).__name__
            text = text.replace("Program failed with an unhandled exception:", "").strip()
            # Under the stack, as the Python language host reports it: a RunError's message,
            # anything else as an unhandled exception with its traceback.
            if isinstance(exc, pulumi.RunError):
                shown = text
            else:
                trace = "".join(traceback.format_exception(exc)[-6:]).rstrip()
                shown = f"Program failed with an unhandled exception:\n{trace}"
            self.on_event(diagnostic(op.stack_urn, shown))
            raise EngineError(text) from None
        if op.error is not None:
            raise op.error


class _Locked(Crypter):
    """The passphrase manager the CLI returns for a wrong passphrase: it fails on use."""

    def __init__(self) -> None:
        pass

    def decrypt_text(self, text: str) -> str:
        raise WrongPassphrase


_LOCKED = _Locked()


class _NoMocks(pulumi.runtime.Mocks):
    """The mock runtime wants a Mocks; `_Monitor` answers every registration itself."""

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        raise AssertionError("registrations are answered by the engine stand-in")

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any] | None]:
        raise EngineError(f"the program is not expected to invoke {args.token}")


class _Monitor(mocks.MockMonitor):
    """The resource monitor the SDK talks to: each registration becomes an engine step."""

    def __init__(self, op: Operation) -> None:
        super().__init__(_NoMocks())
        self.op = op

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        urn = self.make_urn(request.parent, request.type, request.name)
        id_, outputs = self.op.register(urn, request)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=to_struct(outputs))

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
        self.op.register_outputs(request.urn, request.outputs)
        return empty_pb2.Empty()
