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
(`standin.sealing`). What it does not do, and the real engine does: run steps in parallel (it
runs one at a time); keep the default providers as resources of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import runpy
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import empty_pb2
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.proto import resource_pb2

from standin.fakes import FakeDigitalOcean, FakeRandom
from standin.provider_host import Diff, ProviderError, ProviderHost
from standin.sealing import Crypter, WrongPassphrase, seal, unseal
from standin.wire import (
    Props,
    annotate_secrets,
    from_struct,
    reveal,
    secret,
    to_struct,
)

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "citrus-deploy"
STACK_TYPE = "pulumi:pulumi:Stack"
DYNAMIC_PREFIX = "pulumi-python:dynamic"
DO_PROVIDER_TYPE = "pulumi:providers:digitalocean"
PROVIDER_PREFIX = "pulumi:providers:"

OnOutput = Callable[[str], None]


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
        project_dir: Path = ROOT,
        project: str = PROJECT,
        on_output: OnOutput | None = None,
        step_delay: float = 0.0,
        host_env: dict[str, str] | None = None,
        passphrase: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.project_dir = project_dir
        self.project = project
        self.on_output = on_output or (lambda _line: None)
        self.step_delay = step_delay
        self.host_env = host_env
        self.passphrase = passphrase  # seals the checkpoint's secrets; export() needs none
        self.cloud_file = state_dir / "digitalocean.json"
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
        """The stack's checkpoint, as `pulumi stack export [--show-secrets]` shows it: secrets
        as ciphertext, or decrypted with the passphrase."""
        path = self.state_path(stack)
        if not path.exists():
            return {"resources": [], "pending_operations": []}
        loaded: dict[str, Any] = json.loads(path.read_text())
        if not show_secrets:
            return loaded
        return self._unsealed(stack, loaded)

    def _passphrase(self) -> str:
        if not self.passphrase:  # the CLI's own words
            raise EngineError(
                "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
                "PULUMI_CONFIG_PASSPHRASE_FILE environment variables"
            )
        return self.passphrase

    def _unsealed(self, stack: str, sealed: dict[str, Any]) -> dict[str, Any]:
        try:
            crypter = Crypter.for_checkpoint(self._passphrase(), sealed.get("secrets"))
        except WrongPassphrase:
            raise EngineError(
                f"error: incorrect passphrase: the checkpoint of stack {stack} was sealed with "
                "another PULUMI_CONFIG_PASSPHRASE"
            ) from None
        unsealed: dict[str, Any] = unseal(sealed, crypter)
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
        if lock:
            self._acquire(stack)
        op = _Operation(self, stack, config, mode)
        started = time.monotonic()
        try:
            yield op
        finally:
            op.close()
            if lock:
                self.lock_path(stack).unlink(missing_ok=True)
        summary = ", ".join(f"{n} {o}" for o, n in sorted(op.result.change_summary.items()))
        self.on_output(f"Resources: {summary or 'none'}")
        self.on_output(f"Duration: {time.monotonic() - started:.1f}s")

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
            os.chdir(self.project_dir)  # the CLI runs the program in the project directory
            try:
                runpy.run_path(str(self.project_dir / "__main__.py"), run_name="__main__")
            finally:
                os.chdir(cwd)
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
            raise EngineError(text) from None
        if op.error is not None:
            raise op.error


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
        self.crypter: Crypter = checkpoint.pop("crypter", None) or Crypter.for_checkpoint(
            passphrase, None
        )
        self.old: dict[str, Resource] = {
            r["urn"]: Resource(**r) for r in checkpoint["resources"] if not r.get("delete")
        }
        self.new: dict[str, Resource] = dict(self.old)  # the checkpoint as it is now
        self.replaced: list[Resource] = [
            Resource(**r) for r in checkpoint["resources"] if r.get("delete")
        ]
        self.pending: list[dict[str, Any]] = list(checkpoint.get("pending_operations", []))
        self.registered: set[str] = set()
        self._lock = threading.Lock()
        self._host: ProviderHost | None = None
        self._random = FakeRandom()

    @property
    def preview(self) -> bool:
        return self.mode in ("preview", "refresh-preview")

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
        data = seal(
            {"version": 3, "resources": resources, "pending_operations": self.pending},
            self.crypter,
        )
        data["secrets"] = self.crypter.state()  # the salt and a check value, never the key
        path = self.engine.state_path(self.stack)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
        tmp.replace(path)

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

    # -- steps ---------------------------------------------------------------------------------

    def _go_on(self) -> None:
        if self.error is not None:
            raise EngineError("not started: an earlier step failed")
        if self.engine._cancel.is_set():
            self.error = Cancelled("error: update canceled")
            raise self.error

    def _step(self, op: str, urn: str, **detail: Any) -> None:
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
            self.new[urn] = res
            self.save()
            self._step(reg.op, urn)
            return "", {}
        if self.mode == "destroy-program":
            return self._answer_from_state(reg, urn, news, old)

        if old is not None and reg.ignore_changes:
            news = {**news, **{k: old.inputs[k] for k in reg.ignore_changes if k in old.inputs}}
        if typ.startswith(PROVIDER_PREFIX):
            checked, failures = news, []
        else:
            prov = self.provider_for(typ, request.provider)
            checked, failures = prov.check(urn, reveal(old.inputs) if old else {}, reveal(news))
        if failures:
            problems = "; ".join(f"property {p} has a problem: {r}" for p, r in failures)
            raise EngineError(f"error: {typ} resource '{request.name}': {problems}")
        checked = annotate_secrets(checked, news)

        op = "create" if old is None else self._diff(typ, urn, request.provider, old, checked)
        reg.op = op
        if op == "same":
            assert old is not None
            id_, outs = old.id, old.outputs
        else:
            id_, outs = self._apply(op, typ, urn, request.provider, old, checked)
        outs = annotate_secrets(outs, checked)
        for key in reg.additional_secret_outputs:
            if key in outs:
                outs[key] = secret(outs[key])
        reg.id, reg.outputs = id_, outs
        # Recorded first, then announced, as the engine does: output can fail (its reader gone),
        # and a resource made but not in the checkpoint would be made again by the next `up`.
        if not self.preview:
            res = Resource(
                urn,
                typ,
                custom=True,
                parent=request.parent,
                id=id_,
                inputs=checked,
                outputs=outs,
                provider=request.provider,
                dependencies=list(request.dependencies),
            )
            if op == "replace":
                assert old is not None
                self.replaced.append(old)
            self.new[urn] = res
            self.save()
        self._step(op, urn, diffs=changed_keys(old.inputs, checked) if old else [])
        return id_, outs

    def _diff(self, typ: str, urn: str, provider_ref: str, old: Resource, checked: Props) -> str:
        if typ.startswith(PROVIDER_PREFIX):
            changed = reveal(old.inputs) != reveal(checked)
            return "update" if changed else "same"
        prov = self.provider_for(typ, provider_ref)
        diff: Diff = prov.diff(
            urn, old.id, reveal(old.outputs), reveal(checked), reveal(old.inputs)
        )
        changes = diff.changes
        if changes is None:  # DIFF_UNKNOWN: the engine compares the inputs itself
            changes = reveal(old.inputs) != reveal(checked)
        if not changes:
            return "same"
        return "replace" if diff.replaces else "update"

    def _apply(
        self, op: str, typ: str, urn: str, provider_ref: str, old: Resource | None, news: Props
    ) -> tuple[str, Props]:
        dynamic = typ.startswith(DYNAMIC_PREFIX)
        if typ.startswith(PROVIDER_PREFIX):
            id_ = old.id if old is not None else ("" if self.preview else os.urandom(16).hex())
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
            if urn in self.new and not self.preview:
                self.new[urn].outputs = from_struct(outputs)
                self.save()

    def _delete(self, res: Resource, forget: Callable[[], object], op: str = "delete") -> None:
        """Deletes `res` through its provider, `forget`s it in the checkpoint and saves it,
        then says so (recorded before announced, as in _register)."""
        self._go_on()
        if res.custom and not res.type.startswith(PROVIDER_PREFIX) and not self.preview:
            prov = self.provider_for(res.type, res.provider)
            with self._pending("deleting", res):
                self._slow_provider()
                try:
                    prov.delete(res.urn, res.id, reveal(res.outputs), reveal(res.inputs))
                except ProviderError as exc:
                    self.error = EngineError(f"error: {exc}")
                    raise self.error from None
        forget()
        self.save()
        self._step(op, res.urn)

    def delete_unregistered(self) -> None:
        """After the program: what it no longer registers is deleted, then what was replaced,
        dependents first."""
        gone = [r for urn, r in self.old.items() if urn not in self.registered]
        for res in reversed(gone):
            self._delete(res, functools.partial(self.new.pop, res.urn, None))
        for res in reversed(list(self.replaced)):
            self._delete(res, functools.partial(self.replaced.remove, res), "delete-replaced")

    def delete_all(self) -> None:
        for res in reversed([*self.new.values(), *self.replaced]):
            if res in self.replaced:
                self._delete(res, functools.partial(self.replaced.remove, res))
            else:
                self._delete(res, functools.partial(self.new.pop, res.urn, None))

    def refresh_all(self) -> None:
        for res in list(self.new.values()):
            self._go_on()
            if not res.custom or res.type.startswith(PROVIDER_PREFIX):
                # Components and providers never change with a refresh: a step all the same.
                self._step("same", res.urn, old=res.outputs, new=res.outputs)
                continue
            prov = self.provider_for(res.type, res.provider)
            try:
                id_, outs, inputs = prov.read(
                    res.urn, res.id, reveal(res.outputs), reveal(res.inputs)
                )
            except ProviderError as exc:
                self.error = EngineError(f"error: {exc}")
                raise self.error from None
            if not id_:  # gone: dropped from the checkpoint
                del self.new[res.urn]
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
                self._step(op, res.urn, diffs=drifted, old=res.outputs, new=outs)
                res.outputs = outs
                if inputs is not None:
                    res.inputs = annotate_secrets(inputs, res.inputs)
            self.save()


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
