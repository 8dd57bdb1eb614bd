"""The steps that take resources away or read them back: deletes (what the program no longer
registers, what was replaced, everything at a destroy) and the refresh of every resource."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from citrus_deploy.standin.model import (
    PROVIDER_PREFIX,
    EngineError,
    Resource,
    drifted_keys,
    is_default_provider,
)
from citrus_deploy.standin.provider_host import ProviderError
from citrus_deploy.standin.wire import (
    annotate_secrets,
    reveal,
)

if TYPE_CHECKING:
    from citrus_deploy.standin.operation import Operation


def delete(
    op: Operation,
    res: Resource,
    forget: Callable[[], object],
    kind: str = "delete",
    *,
    internal: bool = False,
) -> None:
    """Deletes `res` through its provider, `forget`s it in the checkpoint and saves it,
    then says so (recorded before announced, as a registration is)."""
    op.go_on()
    op.emit("resourcePreEvent", kind, res, None)
    if res.custom and not res.type.startswith(PROVIDER_PREFIX) and not op.preview:
        prov = op.provider_for(res.type, res.provider)
        with op.in_flight("deleting", res):
            op.slow_provider()
            try:
                prov.delete(res.urn, res.id, reveal(res.outputs), reveal(res.inputs))
            except ProviderError as exc:
                op.failed(kind, res, None, exc)
                op.error = EngineError(f"error: {exc}")
                raise op.error from None
    forget()
    op.save()
    op.emit("resOutputsEvent", kind, res, None)
    op.step(kind, res.urn, internal=internal)


def delete_unregistered(op: Operation) -> None:
    """After the program: what it no longer registers is deleted, then what was replaced,
    dependents first."""
    gone = [r for urn, r in op.old.items() if urn not in op.registered]
    for res in reversed(gone):
        internal = is_default_provider(res.urn)
        delete(op, res, functools.partial(op.new.pop, res.urn, None), internal=internal)
    for res in reversed(list(op.replaced)):
        delete(op, res, functools.partial(op.replaced.remove, res), "delete-replaced")


def delete_all(op: Operation) -> None:
    for res in reversed([*op.new.values(), *op.replaced]):
        internal = is_default_provider(res.urn)
        if res in op.replaced:
            delete(op, res, functools.partial(op.replaced.remove, res))
        else:
            forget = functools.partial(op.new.pop, res.urn, None)
            delete(op, res, forget, internal=internal)


def refresh_all(op: Operation) -> None:
    for res in list(op.new.values()):
        op.go_on()
        internal = is_default_provider(res.urn)
        op.emit("resourcePreEvent", "refresh", res, res)
        if not res.custom or res.type.startswith(PROVIDER_PREFIX):
            # Components and providers never change with a refresh: a step all the same.
            op.emit("resOutputsEvent", "same", res, res)
            op.step("same", res.urn, old=res.outputs, new=res.outputs, internal=internal)
            continue
        prov = op.provider_for(res.type, res.provider)
        try:
            id_, outs, inputs = prov.read(res.urn, res.id, reveal(res.outputs), reveal(res.inputs))
        except ProviderError as exc:
            op.failed("refresh", res, res, exc)
            op.error = EngineError(f"error: {exc}")
            raise op.error from None
        if not id_:  # gone: dropped from the checkpoint
            del op.new[res.urn]
            op.emit("resOutputsEvent", "delete", res, None)
            op.step("delete", res.urn, old=res.outputs)
        else:
            outs = annotate_secrets(outs, res.outputs)
            drifted = drifted_keys(res.inputs, res.outputs, outs)
            kind = "update" if reveal(outs) != reveal(res.outputs) else "same"
            if op.mode == "refresh-preview":
                # As the engine's refresh diff against the desired state: drift is what an
                # `up` of the unchanged program would undo, i.e. an input key whose value
                # the provider now reports otherwise; an output of its own (a row's
                # status, a droplet's IP) is no drift.
                kind = "update" if drifted else "same"
            read = Resource(**{**asdict(res), "outputs": outs})
            detail = {"diffs": drifted} if kind == "update" else {}
            op.emit("resOutputsEvent", kind, res, read, **detail)
            op.step(kind, res.urn, diffs=drifted, old=res.outputs, new=outs)
            res.outputs = outs
            if inputs is not None:
                res.inputs = annotate_secrets(inputs, res.inputs)
        op.save()
