"""One preview, up, refresh or destroy of one stack on the engine stand-in: its checkpoint, its
providers, each registration as the engine's step, and the events of each step."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pulumi.runtime import rpc

from citrus_deploy.standin.fakes import FakeDigitalOcean, FakeRandom
from citrus_deploy.standin.model import (
    DYNAMIC_PREFIX,
    ENGINE_VERSION,
    PROVIDER_PREFIX,
    STACK_TYPE,
    Cancelled,
    Diffed,
    EngineError,
    Registration,
    Resource,
    Result,
    StackConfig,
    Step,
    changed_keys,
    diagnostic,
    now,
    state_metadata,
)
from citrus_deploy.standin.provider_host import Diff, ProviderError, ProviderHost
from citrus_deploy.standin.sealing import (
    INCORRECT_PASSPHRASE,
    Crypter,
    WrongPassphrase,
    seal,
)
from citrus_deploy.standin.wire import (
    UNKNOWN,
    Props,
    annotate_secrets,
    from_struct,
    reveal,
    secret,
)

if TYPE_CHECKING:
    from citrus_deploy.standin.engine import Engine


class Operation:
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
            "manifest": {"time": now(), "magic": "", "version": ENGINE_VERSION},
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
    def in_flight(self, kind: str, res: Resource) -> Iterator[None]:
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
            self.emit("resourcePreEvent", op, old, res)
            if not self.preview:
                self.new[urn] = res
                self.save()
            self.emit("resOutputsEvent", op, old, res)
            self.step(op, urn, internal=True)
        found = self.new.get(urn) or old
        return f"{urn}::{found.id if found else UNKNOWN}"

    # -- events --------------------------------------------------------------------------------

    def emit(
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

    def failed(self, op: str, old: Resource | None, new: Resource | None, exc: Exception) -> None:
        """A step the provider failed: resOpFailedEvent and the error under the resource
        (updateActions.OnResourceStepPost, pkg/engine/update.go)."""
        self.emit("resOpFailedEvent", op, old, new)
        urn = (new or old).urn  # type: ignore[union-attr]
        self.engine.on_event(diagnostic(urn, str(exc)))

    # -- steps ---------------------------------------------------------------------------------

    def go_on(self) -> None:
        if self.error is not None:
            raise EngineError("not started: an earlier step failed")
        if self.engine._cancel.is_set():
            self.error = Cancelled("error: update canceled")
            raise self.error

    def step(self, op: str, urn: str, *, internal: bool = False, **detail: Any) -> None:
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
                self.go_on()
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
            self.emit("resourcePreEvent", reg.op, old, res)
            self.new[urn] = res
            self.save()
            self.step(reg.op, urn)
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
        self.emit("resourcePreEvent", first, old, planned, **detail)
        if op == "same":
            assert old is not None
            id_, outs = old.id, old.outputs
        else:
            try:
                id_, outs = self._apply(op, typ, urn, provider_ref, old, checked)
            except ProviderError as exc:
                self.failed(first, old, planned, exc)
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
            self.emit("resOutputsEvent", first, gone, res, **detail)
            self.emit("resourcePreEvent", "replace", gone, res, logical=True, **detail)
            self.emit("resOutputsEvent", "replace", gone, res, logical=True, **detail)
        else:
            self.emit("resOutputsEvent", op, old, res, **detail)
        self.step(op, urn, diffs=changed_keys(old.inputs, checked) if old else [])
        return id_, outs

    def _diff(self, typ: str, urn: str, provider_ref: str, old: Resource, checked: Props) -> Diffed:
        if typ.startswith(PROVIDER_PREFIX):
            changed = reveal(old.inputs) != reveal(checked)
            return Diffed("update" if changed else "same")
        prov = self.provider_for(typ, provider_ref)
        diff: Diff = prov.diff(
            urn, old.id, reveal(old.outputs), reveal(checked), reveal(old.inputs)
        )
        changes = diff.changes
        if changes is None:  # DIFF_UNKNOWN: the engine compares the inputs itself
            changes = reveal(old.inputs) != reveal(checked)
        if not changes:
            return Diffed("same")
        # What the provider names (a bridged provider its changed keys, the dynamic host none)
        detailed = {
            key: {"diffKind": "update-replace" if key in diff.replaces else "update"}
            | {"inputDiff": False}
            for key in diff.changed
        }
        op = "replace" if diff.replaces else "update"
        return Diffed(op, sorted(diff.replaces), sorted(diff.changed), detailed or None)

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
            with self.in_flight("updating", old):
                self.slow_provider()
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
        with self.in_flight("creating", planned):
            self.slow_provider()
            id_, outs = prov.create(urn, reveal(news))
        return id_, outs

    def slow_provider(self) -> None:
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
                self.emit("resOutputsEvent", self._ops[urn], self.old.get(urn), shown)
