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
import functools
import json
import os
import runpy
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import empty_pb2
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.proto import resource_pb2

from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.standin.fakes import FakeDigitalOcean, FakeRandom
from citrus_deploy.standin.provider_host import Diff, ProviderError, ProviderHost
from citrus_deploy.standin.sealing import (
    INCORRECT_PASSPHRASE,
    Crypter,
    WrongPassphrase,
    seal,
    unseal,
)
from citrus_deploy.standin.wire import (
    UNKNOWN,
    Props,
    annotate_secrets,
    from_struct,
    is_secret,
    reveal,
    secret,
    to_struct,
)

PROJECT = "citrus-deploy"
STACK_TYPE = "pulumi:pulumi:Stack"
DYNAMIC_PREFIX = "pulumi-python:dynamic"
DO_PROVIDER_TYPE = "pulumi:providers:digitalocean"
PROVIDER_PREFIX = "pulumi:providers:"

OnOutput = Callable[[str], None]
OnEvent = Callable[[dict[str, Any]], None]
SECRET_SHOWN = "[secret]"  # noqa: S105 (how the event log shows a secret value)
ENGINE_VERSION = "v3.272.0"  # the manifest's version: the CLI of the installed SDK


class EngineError(Exception):
    """The operation failed; the message is what the CLI would print."""


class StackLocked(EngineError):
    pass


class Cancelled(EngineError):
    pass


@dataclass(frozen=True)
class StackConfig:
    """The stack's config as the CLI hands it over: `project:key` -> text, some keys secret."""

    values: dict[str, str]
    secret_keys: frozenset[str] = frozenset()

    def wire(self) -> Props:
        """What the engine sends a dynamic provider host in Configure: every key, secrets
        marked."""
        return {k: secret(v) if k in self.secret_keys else v for k, v in self.values.items()}

    def shown(self) -> dict[str, str]:
        """The config as the prelude event shows it: secrets blinded."""
        return {k: SECRET_SHOWN if k in self.secret_keys else v for k, v in self.values.items()}


@dataclass
class Resource:
    """One resource of the checkpoint; inputs and outputs in wire form (secrets marked)."""

    urn: str
    type: str
    custom: bool
    parent: str = ""
    id: str = ""
    inputs: Props = field(default_factory=dict)
    outputs: Props = field(default_factory=dict)
    provider: str = ""  # "urn::id" of an explicit provider; "" for the default one
    dependencies: list[str] = field(default_factory=list)
    delete: bool = False  # replaced, to be deleted at the end of the update


@dataclass
class Registration:
    """What the program registered and what the engine answered, for tests."""

    typ: str
    name: str
    custom: bool
    inputs: Props  # as the SDK sent them: secrets marked, unknowns as the sentinel
    urn: str = ""
    parent: str = ""
    op: str = ""
    id: str = ""
    outputs: Props = field(default_factory=dict)
    additional_secret_outputs: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)


@dataclass
class Step:
    op: str  # create, same, update, replace, delete, delete-replaced
    urn: str
    # update/replace: the input keys that differ (what `pulumi preview` shows); a refresh's
    # update: the input keys whose value the provider now reports otherwise.
    diffs: list[str] = field(default_factory=list)
    old: Props | None = None  # refresh: the outputs in the checkpoint (wire form)
    new: Props | None = None  # refresh: the outputs read now; None when the resource is gone

    @property
    def type(self) -> str:
        return self.urn.split("::")[2].split("$")[-1]


@dataclass
class Result:
    steps: list[Step] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # the stack's, deserialized
    registrations: list[Registration] = field(default_factory=list)
    component_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def change_summary(self) -> dict[str, int]:
        # As the engine counts: a replacement once, not its deletion of the old resource too.
        return dict(Counter(step.op for step in self.steps if step.op != "delete-replaced"))

    def by_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.typ == typ]


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
            op.delete_unregistered()
        return op.result

    def up(self, stack: str, config: StackConfig) -> Result:
        self.on_output(f"Updating ({stack}):")
        with self._operation(stack, config, "up") as op:
            op.clear_pending_operations()
            self._run_program(op, dry_run=False)
            op.delete_unregistered()
        return op.result

    def refresh(self, stack: str, config: StackConfig, *, preview_only: bool = False) -> Result:
        """Reads every resource through its provider. `preview_only` (`pulumi refresh
        --preview-only`): reports what a refresh would change and changes nothing, not even the
        checkpoint; like the DIY backend's preview-only refresh it takes no lock."""
        if preview_only:
            self.on_output(f"Previewing refresh ({stack}):")
            with self._operation(stack, config, "refresh-preview", lock=False) as op:
                op.refresh_all()
            return op.result
        self.on_output(f"Refreshing ({stack}):")
        with self._operation(stack, config, "refresh") as op:
            op.refresh_all()
        return op.result

    def destroy(self, stack: str, config: StackConfig, *, run_program: bool = False) -> Result:
        self.on_output(f"Destroying ({stack}):")
        with self._operation(stack, config, "destroy") as op:
            if run_program:
                op.mode = "destroy-program"
                self._run_program(op, dry_run=False)
            op.delete_all()
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
    ) -> Iterator[_Operation]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = lock and self.locking
        if lock:
            self._acquire(stack)
        started = time.monotonic()
        try:
            op = _Operation(self, stack, config, mode)
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

    def _end(self, op: _Operation, seconds: float, failed: BaseException | None) -> None:
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

    def _run_program(self, op: _Operation, *, dry_run: bool) -> None:
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

    def __init__(self, op: _Operation) -> None:
        super().__init__(_NoMocks())
        self.op = op

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        urn = self.make_urn(request.parent, request.type, request.name)
        id_, outputs = self.op.register(urn, request)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=to_struct(outputs))

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
        self.op.register_outputs(request.urn, request.outputs)
        return empty_pb2.Empty()


class _Operation:
    """One preview/up/refresh/destroy of one stack: its checkpoint, steps and providers."""

    def __init__(self, engine: Engine, stack: str, config: StackConfig, mode: str) -> None:
        self.engine = engine
        self.stack = stack
        self.config = config
        self.mode = mode
        self.result = Result()
        self.error: EngineError | None = None
        passphrase = engine._passphrase()
        checkpoint = engine.export(stack, show_secrets=True)
        # What this operation writes is sealed with its own secrets manager (the stack file's,
        # from the CLI), else the checkpoint's, else a new one. A checkpoint sealed under another
        # salt is re-encrypted without a word, as SnapshotManager.snap does when the two are
        # not secrets.AreCompatible (pkg/backend/snapshot.go).
        if engine.secrets_state:
            try:
                self.crypter = Crypter.from_state(passphrase, engine.secrets_state)
            except WrongPassphrase:
                raise EngineError(f"error: {INCORRECT_PASSPHRASE}") from None
        else:
            self.crypter = checkpoint.get("crypter") or Crypter.new(passphrase)
        checkpoint.pop("crypter", None)
        self.old: dict[str, Resource] = {
            r["urn"]: Resource(**r) for r in checkpoint["resources"] if not r.get("delete")
        }
        self.new: dict[str, Resource] = dict(self.old)  # the checkpoint as it is now
        self.replaced: list[Resource] = [
            Resource(**r) for r in checkpoint["resources"] if r.get("delete")
        ]
        self.pending: list[dict[str, Any]] = list(checkpoint.get("pending_operations", []))
        self.registered: set[str] = set()
        self._ops: dict[str, str] = {}  # the op of each component's step, for its outputs event
        self._lock = threading.Lock()
        self._host: ProviderHost | None = None
        self._random = FakeRandom()

    @property
    def preview(self) -> bool:
        return self.mode in ("preview", "refresh-preview")

    @property
    def stack_urn(self) -> str:
        project = self.engine.project
        return f"urn:pulumi:{self.stack}::{project}::{STACK_TYPE}::{project}-{self.stack}"

    def close(self) -> None:
        if self._host is not None:
            self._host.close()

    def say(self, line: str) -> None:
        self.engine.on_output(line)

    # -- checkpoint ----------------------------------------------------------------------------

    def save(self) -> None:
        if self.preview:
            return
        resources = [asdict(r) for r in self.new.values()]
        resources += [{**asdict(r), "delete": True} for r in self.replaced]
        deployment = {
            "manifest": {"time": _now(), "magic": "", "version": ENGINE_VERSION},
            # the salt and a check value, never the key (localSecretsManagerState)
            "secrets_providers": {"type": "passphrase", "state": {"salt": self.crypter.state()}},
            "resources": resources,
            "pending_operations": self.pending,
        }
        self.engine.write_checkpoint(self.stack, seal(deployment, self.crypter))

    def clear_pending_operations(self) -> None:
        """What `pulumi up` does with pending operations: warns, drops them, goes on (a pending
        create is then created again)."""
        if not self.pending:
            return
        self.say(
            f"warning: Attempting to deploy or update resources with {len(self.pending)} pending "
            "operations from previous deployment."
        )
        for pending in self.pending:
            self.say(f"  * {pending['resource']['urn']}, interrupted while {pending['type']}")
        self.say(
            "These resources are in an unknown state because the Pulumi CLI was interrupted "
            "while waiting for changes to these resources to complete."
        )
        self.pending = []
        self.save()

    @contextlib.contextmanager
    def _pending(self, kind: str, res: Resource) -> Iterator[None]:
        """Records the operation in the checkpoint while the provider works on it, as the
        engine does: only a process killed meanwhile leaves it there."""
        if self.preview:
            yield
            return
        entry = {"resource": asdict(res), "type": kind}
        self.pending.append(entry)
        self.save()
        try:
            yield
        finally:  # done, or failed with the provider's answer: either way no longer pending
            self.pending.remove(entry)
            self.save()

    # -- providers -----------------------------------------------------------------------------

    def host(self) -> ProviderHost:
        """The `pulumi-python` plugin (default provider of dynamic resources), started and
        configured with the whole stack config on first use."""
        if self._host is None:
            try:
                self._host = ProviderHost(
                    self.engine.project_dir, self.engine.project, env=self.engine.host_env
                )
                self._host.configure(self.config.wire())
            except ProviderError as exc:
                raise EngineError(str(exc)) from None
        return self._host

    def provider_for(self, typ: str, provider_ref: str) -> Any:
        if typ.startswith(DYNAMIC_PREFIX):
            return self.host()
        if typ.startswith("random:"):
            return self._random
        if typ.startswith("digitalocean:"):
            prov_urn = provider_ref.rsplit("::", 1)[0]  # "urn::id"; the id may be unknown
            found = self.new.get(prov_urn) or self.old.get(prov_urn)
            token = reveal(found.inputs.get("token")) if found else None
            return FakeDigitalOcean(self.engine.cloud_file, token=token)
        raise EngineError(f"no provider for {typ} in the engine stand-in")

    def default_provider(self, typ: str, version: str) -> str:
        """The reference (`urn::id`) of the default provider of `typ`'s package, registered
        (an internal step of its own) the first time this operation needs it. Its name is
        `default`, or `default_<major>_<minor>_<patch>` for a resource that names the plugin's
        version (providers.DefaultName in pkg/resource/deploy/providers/provider.go)."""
        package = "pulumi-python" if typ.startswith(DYNAMIC_PREFIX) else typ.split(":")[0]
        name = f"default_{version.replace('.', '_')}" if version else "default"
        urn = f"urn:pulumi:{self.stack}::{self.engine.project}::{PROVIDER_PREFIX}{package}::{name}"
        old = self.old.get(urn)
        if urn not in self.registered:
            self.registered.add(urn)
            if self.preview:
                id_ = old.id if old else UNKNOWN
            else:
                id_ = old.id if old else str(uuid.uuid4())
            inputs: Props = {"version": version} if version else {}
            res = Resource(urn, f"{PROVIDER_PREFIX}{package}", True, id=id_)
            res.inputs, res.outputs = inputs, dict(inputs)
            op = "same" if old else "create"
            self._emit("resourcePreEvent", op, old, res)
            if not self.preview:
                self.new[urn] = res
                self.save()
            self._emit("resOutputsEvent", op, old, res)
            self._step(op, urn, internal=True)
        found = self.new.get(urn) or old
        return f"{urn}::{found.id if found else UNKNOWN}"

    # -- events --------------------------------------------------------------------------------

    def _emit(
        self, kind: str, op: str, old: Resource | None, new: Resource | None, **extra: Any
    ) -> None:
        """A step event: resourcePreEvent, resOutputsEvent or resOpFailedEvent, with the
        StepEventMetadata of pkg/engine/events.go (makeStepEventMetadata)."""
        res = new or old
        assert res is not None
        meta = {
            "op": op,
            "urn": res.urn,
            "type": res.type,
            "old": state_metadata(old),
            "new": state_metadata(new),
            "provider": res.provider,
            **{k: v for k, v in extra.items() if v},
        }
        payload: dict[str, Any] = {"metadata": meta}
        if kind == "resOpFailedEvent":
            payload |= {"status": 2, "steps": 0}
        elif self.preview:
            payload["planning"] = True
        self.engine.on_event({kind: payload})

    def _failed(self, op: str, old: Resource | None, new: Resource | None, exc: Exception) -> None:
        """A step the provider failed: resOpFailedEvent and the error under the resource
        (updateActions.OnResourceStepPost, pkg/engine/update.go)."""
        self._emit("resOpFailedEvent", op, old, new)
        urn = (new or old).urn  # type: ignore[union-attr]
        self.engine.on_event(diagnostic(urn, str(exc)))

    # -- steps ---------------------------------------------------------------------------------

    def _go_on(self) -> None:
        if self.error is not None:
            raise EngineError("not started: an earlier step failed")
        if self.engine._cancel.is_set():
            self.error = Cancelled("error: update canceled")
            raise self.error

    def _step(self, op: str, urn: str, *, internal: bool = False, **detail: Any) -> None:
        """Records the step and says so; an internal step (a default provider's) only counts
        in the event stream, as the CLI hides it from its display and summary."""
        if internal:
            return
        self.result.steps.append(Step(op, urn, **detail))
        marks = {"create": "+ ", "update": "~ ", "replace": "+-", "delete": "- "}
        done = {"create": "created", "update": "updated", "replace": "replaced"}
        done |= {"delete": "deleted", "delete-replaced": "deleted (replaced)", "same": "unchanged"}
        word = op if self.preview else done.get(op, op)
        mark = marks.get(op, "- " if op == "delete-replaced" else "= ")
        self.say(f" {mark} {Step(op, urn).type} {urn.rsplit('::', 1)[-1]} {word}")

    def register(self, urn: str, request: Any) -> tuple[str, Props]:
        with self._lock:
            try:
                self._go_on()
                return self._register(urn, request)
            except EngineError as exc:
                self.error = self.error or exc
                raise
            except ProviderError as exc:
                self.error = self.error or EngineError(f"error: {exc}")
                raise self.error from None

    def _register(self, urn: str, request: Any) -> tuple[str, Props]:
        typ, custom = request.type, bool(request.custom) or request.type.startswith(PROVIDER_PREFIX)
        news = from_struct(request.object)
        reg = Registration(
            typ,
            request.name,
            custom,
            news,
            urn=urn,
            parent=request.parent,
            additional_secret_outputs=list(request.additionalSecretOutputs),
            ignore_changes=list(request.ignoreChanges),
        )
        self.result.registrations.append(reg)
        self.registered.add(urn)
        old = self.old.get(urn)
        if self.mode == "destroy-program" and (not custom or typ == STACK_TYPE):
            return "", {}
        if not custom or typ == STACK_TYPE:
            reg.op = "same" if old else "create"
            res = Resource(urn, typ, custom=False, parent=request.parent)
            res.outputs = old.outputs if old else {}
            self._ops[urn] = reg.op
            self._emit("resourcePreEvent", reg.op, old, res)
            self.new[urn] = res
            self.save()
            self._step(reg.op, urn)
            return "", {}
        if self.mode == "destroy-program":
            return self._answer_from_state(reg, urn, news, old)

        provider_ref = request.provider
        if not provider_ref and not typ.startswith(PROVIDER_PREFIX):
            provider_ref = self.default_provider(typ, request.version)
        if old is not None and reg.ignore_changes:
            news = {**news, **{k: old.inputs[k] for k in reg.ignore_changes if k in old.inputs}}
        if typ.startswith(PROVIDER_PREFIX):
            checked, failures = news, []
        else:
            prov = self.provider_for(typ, provider_ref)
            checked, failures = prov.check(urn, reveal(old.inputs) if old else {}, reveal(news))
        if failures:
            problems = "; ".join(f"property {p} has a problem: {r}" for p, r in failures)
            error = EngineError(f"error: {typ} resource '{request.name}': {problems}")
            self.engine.on_event(diagnostic(urn, str(error).removeprefix("error: ")))
            raise error
        checked = annotate_secrets(checked, news)

        diff = None if old is None else self._diff(typ, urn, provider_ref, old, checked)
        op = "create" if diff is None else diff.op
        reg.op = op
        planned = Resource(
            urn,
            typ,
            custom=True,
            parent=request.parent,
            id=old.id if old is not None and op != "replace" else "",
            inputs=checked,
            outputs=old.outputs if old is not None and op != "replace" else {},
            provider=provider_ref,
            dependencies=list(request.dependencies),
        )
        detail: dict[str, Any] = {}
        if diff is not None:
            detail = {"keys": diff.keys, "diffs": diff.diffs, "detailedDiff": diff.detailed}
        first = "create-replacement" if op == "replace" else op
        self._emit("resourcePreEvent", first, old, planned, **detail)
        if op == "same":
            assert old is not None
            id_, outs = old.id, old.outputs
        else:
            try:
                id_, outs = self._apply(op, typ, urn, provider_ref, old, checked)
            except ProviderError as exc:
                self._failed(first, old, planned, exc)
                raise
        outs = annotate_secrets(outs, checked)
        for key in reg.additional_secret_outputs:
            if key in outs:
                outs[key] = secret(outs[key])
        reg.id, reg.outputs = id_, outs
        res = Resource(
            urn,
            typ,
            custom=True,
            parent=request.parent,
            id=id_,
            inputs=checked,
            outputs=outs,
            provider=provider_ref,
            dependencies=list(request.dependencies),
        )
        # Recorded first, then announced, as the engine does: output can fail (its reader gone),
        # and a resource made but not in the checkpoint would be made again by the next `up`.
        if not self.preview:
            if op == "replace":
                assert old is not None
                self.replaced.append(old)
            self.new[urn] = res
            self.save()
        if op == "replace":  # create-before-delete: step_generator.go, then GenerateDeletes
            assert old is not None
            gone = Resource(**{**asdict(old), "delete": True})
            self._emit("resOutputsEvent", first, gone, res, **detail)
            self._emit("resourcePreEvent", "replace", gone, res, logical=True, **detail)
            self._emit("resOutputsEvent", "replace", gone, res, logical=True, **detail)
        else:
            self._emit("resOutputsEvent", op, old, res, **detail)
        self._step(op, urn, diffs=changed_keys(old.inputs, checked) if old else [])
        return id_, outs

    def _diff(
        self, typ: str, urn: str, provider_ref: str, old: Resource, checked: Props
    ) -> _Diffed:
        if typ.startswith(PROVIDER_PREFIX):
            changed = reveal(old.inputs) != reveal(checked)
            return _Diffed("update" if changed else "same")
        prov = self.provider_for(typ, provider_ref)
        diff: Diff = prov.diff(
            urn, old.id, reveal(old.outputs), reveal(checked), reveal(old.inputs)
        )
        changes = diff.changes
        if changes is None:  # DIFF_UNKNOWN: the engine compares the inputs itself
            changes = reveal(old.inputs) != reveal(checked)
        if not changes:
            return _Diffed("same")
        # What the provider names (a bridged provider its changed keys, the dynamic host none)
        detailed = {
            key: {"diffKind": "update-replace" if key in diff.replaces else "update"}
            | {"inputDiff": False}
            for key in diff.changed
        }
        op = "replace" if diff.replaces else "update"
        return _Diffed(op, sorted(diff.replaces), sorted(diff.changed), detailed or None)

    def _apply(
        self, op: str, typ: str, urn: str, provider_ref: str, old: Resource | None, news: Props
    ) -> tuple[str, Props]:
        dynamic = typ.startswith(DYNAMIC_PREFIX)
        if typ.startswith(PROVIDER_PREFIX):
            id_ = old.id if old is not None else (UNKNOWN if self.preview else str(uuid.uuid4()))
            return id_, dict(news)
        prov = self.provider_for(typ, provider_ref)
        if op == "update":
            assert old is not None
            if self.preview:  # no Update in a preview; a provider without preview: the inputs
                return old.id, dict(news) if dynamic else {**old.outputs, **news}
            with self._pending("updating", old):
                self._slow_provider()
                outs = prov.update(
                    urn, old.id, reveal(old.outputs), reveal(news), reveal(old.inputs)
                )
            return old.id, outs
        # create, or the create half of a replacement (create-before-delete)
        if self.preview:
            if dynamic:  # the dynamic host does not support previews: the inputs are the state
                return "", dict(news)
            created: tuple[str, Props] = prov.create(urn, reveal(news), preview=True)
            return created
        planned = Resource(urn, typ, custom=True, inputs=news, provider=provider_ref)
        with self._pending("creating", planned):
            self._slow_provider()
            id_, outs = prov.create(urn, reveal(news))
        return id_, outs

    def _slow_provider(self) -> None:
        """`step_delay`: a provider call that takes time, as creating a droplet does."""
        if self.engine.step_delay:
            time.sleep(self.engine.step_delay)

    def _answer_from_state(
        self, reg: Registration, urn: str, news: Props, old: Resource | None
    ) -> tuple[str, Props]:
        """`destroy --run-program`: the program runs so that explicit providers are configured
        from today's config (a rotated token); nothing is created or updated."""
        if old is None:
            return "", {}
        if reg.typ.startswith(PROVIDER_PREFIX):
            old.inputs, old.outputs = news, dict(news)
            self.new[urn] = old
            self.save()
        reg.op, reg.id, reg.outputs = "same", old.id, old.outputs
        return old.id, old.outputs

    def register_outputs(self, urn: str, outputs: Any) -> None:
        with self._lock:
            self.result.component_outputs[urn] = rpc.deserialize_properties(outputs)
            if urn.split("::")[2] == STACK_TYPE:
                self.result.outputs = self.result.component_outputs[urn]
            res = self.new.get(urn)
            if res is not None and not self.preview:
                res.outputs = from_struct(outputs)
                self.save()
            if res is not None and urn in self._ops:  # a component's (or the stack's) outputs
                shown = Resource(**{**asdict(res), "outputs": from_struct(outputs)})
                self._emit("resOutputsEvent", self._ops[urn], self.old.get(urn), shown)

    def _delete(
        self,
        res: Resource,
        forget: Callable[[], object],
        op: str = "delete",
        *,
        internal: bool = False,
    ) -> None:
        """Deletes `res` through its provider, `forget`s it in the checkpoint and saves it,
        then says so (recorded before announced, as in _register)."""
        self._go_on()
        self._emit("resourcePreEvent", op, res, None)
        if res.custom and not res.type.startswith(PROVIDER_PREFIX) and not self.preview:
            prov = self.provider_for(res.type, res.provider)
            with self._pending("deleting", res):
                self._slow_provider()
                try:
                    prov.delete(res.urn, res.id, reveal(res.outputs), reveal(res.inputs))
                except ProviderError as exc:
                    self._failed(op, res, None, exc)
                    self.error = EngineError(f"error: {exc}")
                    raise self.error from None
        forget()
        self.save()
        self._emit("resOutputsEvent", op, res, None)
        self._step(op, res.urn, internal=internal)

    def delete_unregistered(self) -> None:
        """After the program: what it no longer registers is deleted, then what was replaced,
        dependents first."""
        gone = [r for urn, r in self.old.items() if urn not in self.registered]
        for res in reversed(gone):
            internal = _is_default_provider(res.urn)
            self._delete(res, functools.partial(self.new.pop, res.urn, None), internal=internal)
        for res in reversed(list(self.replaced)):
            self._delete(res, functools.partial(self.replaced.remove, res), "delete-replaced")

    def delete_all(self) -> None:
        for res in reversed([*self.new.values(), *self.replaced]):
            internal = _is_default_provider(res.urn)
            if res in self.replaced:
                self._delete(res, functools.partial(self.replaced.remove, res))
            else:
                forget = functools.partial(self.new.pop, res.urn, None)
                self._delete(res, forget, internal=internal)

    def refresh_all(self) -> None:
        for res in list(self.new.values()):
            self._go_on()
            internal = _is_default_provider(res.urn)
            self._emit("resourcePreEvent", "refresh", res, res)
            if not res.custom or res.type.startswith(PROVIDER_PREFIX):
                # Components and providers never change with a refresh: a step all the same.
                self._emit("resOutputsEvent", "same", res, res)
                self._step("same", res.urn, old=res.outputs, new=res.outputs, internal=internal)
                continue
            prov = self.provider_for(res.type, res.provider)
            try:
                id_, outs, inputs = prov.read(
                    res.urn, res.id, reveal(res.outputs), reveal(res.inputs)
                )
            except ProviderError as exc:
                self._failed("refresh", res, res, exc)
                self.error = EngineError(f"error: {exc}")
                raise self.error from None
            if not id_:  # gone: dropped from the checkpoint
                del self.new[res.urn]
                self._emit("resOutputsEvent", "delete", res, None)
                self._step("delete", res.urn, old=res.outputs)
            else:
                outs = annotate_secrets(outs, res.outputs)
                drifted = drifted_keys(res.inputs, res.outputs, outs)
                op = "update" if reveal(outs) != reveal(res.outputs) else "same"
                if self.mode == "refresh-preview":
                    # As the engine's refresh diff against the desired state: drift is what an
                    # `up` of the unchanged program would undo, i.e. an input key whose value
                    # the provider now reports otherwise; an output of its own (a row's
                    # status, a droplet's IP) is no drift.
                    op = "update" if drifted else "same"
                read = Resource(**{**asdict(res), "outputs": outs})
                detail = {"diffs": drifted} if op == "update" else {}
                self._emit("resOutputsEvent", op, res, read, **detail)
                self._step(op, res.urn, diffs=drifted, old=res.outputs, new=outs)
                res.outputs = outs
                if inputs is not None:
                    res.inputs = annotate_secrets(inputs, res.inputs)
            self.save()


@dataclass(frozen=True)
class _Diffed:
    """A Diff's verdict as the engine uses it: the op, the replace keys, the changed keys and
    their kinds (what the provider named)."""

    op: str
    keys: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    detailed: dict[str, Any] | None = None


def _is_default_provider(urn: str) -> bool:
    parts = urn.split("::")
    return parts[2].startswith(PROVIDER_PREFIX) and parts[-1].startswith("default")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def blinded(value: Any) -> Any:
    """A value as the event log shows it: every secret "[secret]" (showSecrets=false)."""
    if is_secret(value):
        return SECRET_SHOWN
    if isinstance(value, dict):
        return {k: blinded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [blinded(v) for v in value]
    return value


def diagnostic(urn: str, message: str, severity: str = "error") -> dict[str, Any]:
    """A diagnosticEvent as the CLI writes it without colour (pkg/backend/display/events.go)."""
    text = message if message.endswith("\n") else message + "\n"
    event = {"urn": urn, "prefix": f"{severity}: ", "message": text, "color": "never"}
    return {"diagnosticEvent": {**event, "severity": severity}}


def state_metadata(res: Resource | None) -> dict[str, Any] | None:
    """A StepEventStateMetadata (sdk/go/common/apitype/events.go), secrets blinded."""
    if res is None:
        return None
    meta: dict[str, Any] = {
        "type": res.type,
        "urn": res.urn,
        "id": res.id,
        "parent": res.parent,
        "inputs": blinded(res.inputs),
        "outputs": blinded(res.outputs),
        "provider": res.provider,
    }
    if res.custom:
        meta["custom"] = True
    if res.delete:
        meta["delete"] = True
    return meta


def changed_keys(old: Props, new: Props) -> list[str]:
    """The keys whose values differ (secrets compared by value), the engine's own
    `__provider`-style keys left out: what the CLI shows for a step whose provider named none."""
    keys = {k for k in {*old, *new} if not k.startswith("__")}
    return sorted(k for k in keys if reveal(old.get(k)) != reveal(new.get(k)))


def drifted_keys(inputs: Props, old_outputs: Props, new_outputs: Props) -> list[str]:
    """The input keys whose output value changed between the checkpoint and a Read."""
    return [
        key
        for key in changed_keys(old_outputs, new_outputs)
        if key in inputs and key in old_outputs
    ]


SECRET_KEYS = frozenset({f"{PROJECT}:githubToken", f"{PROJECT}:databaseUrl", "digitalocean:token"})


def stack_config(stack_file: Path, **overrides: Any) -> StackConfig:
    """The config the CLI would hand over for a stack file, plus overrides (`key` of this
    project or `namespace:key`). Values are text, lists JSON-encoded, as the CLI passes them;
    the secrets a real stack holds encrypted (githubToken, databaseUrl, digitalocean:token)
    come in as overrides."""
    import yaml

    raw = yaml.safe_load(stack_file.read_text()).get("config", {})
    for key, value in overrides.items():
        raw[key if ":" in key else f"{PROJECT}:{key}"] = value
    values = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in raw.items()
        if value is not None
    }
    return StackConfig(values, SECRET_KEYS)
