"""What the Pulumi CLI's engine events say: the steps of a check, the errors of a failure, lines
for the deployment's output, and whether the engine is running (so a stop can be delivered).

The events are the CLI's `--event-log` stream (pulumi/pulumi `sdk/go/common/apitype/events.go`),
which the Automation API hands to `on_event`. A replacement is three steps for one URN
(`create-replacement`, `replace`, later `delete-replaced`: `pkg/resource/deploy/
step_generator.go`), folded here into one `replace`; default providers' steps are internal to
the engine (named `default...`, not in its summary) and left out; a failed step's error is a
diagnostic event with its URN, the operation's outcome one without (`update failed`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from citrus_deploy.engine.deployer import CheckStep, OnOutput

REPLACEMENT_OPS = frozenset({"create-replacement", "replace", "delete-replaced"})


def op_name(value: Any) -> str:
    return str(getattr(value, "value", value))  # OpType.CREATE -> "create"


def is_default_provider(urn: str) -> bool:
    parts = urn.split("::")
    return (
        len(parts) > 3
        and parts[2].startswith("pulumi:providers:")
        and (parts[-1] == "default" or parts[-1].startswith("default_"))
    )


class EngineEvents:
    """The `on_event` of one CLI operation: prints the lines worth one (failures, errors, the
    summary), keeps the error diagnostics and the summary, and knows when the engine runs
    (from its first event until its summary), which is when the CLI handles SIGTERM."""

    def __init__(self, on_output: OnOutput, on_engine: Callable[[bool], None] = lambda _r: None):
        self.on_output = on_output
        self.on_engine = on_engine
        self.errors: list[tuple[str, str]] = []  # (urn, message); urn "" is the stack's
        self.summary: dict[str, int] | None = None
        self.running = False
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        line = describe_event(event)
        if line:
            self.on_output(line)
        diag = getattr(event, "diagnostic_event", None)
        if diag is not None and str(diag.severity).startswith("error"):
            self.errors.append((diag.urn or "", diag.message.strip()))
        summary = getattr(event, "summary_event", None)
        with self._lock:
            if summary is not None:
                self.summary = dict(summary.resource_changes or {})
            starting = not self.running and summary is None and self.summary is None
            if starting:
                self.running = True
            elif summary is not None and self.running:
                self.running = False
            else:
                return
        self.on_engine(self.running)

    def error_text(self) -> str:
        """The failure as the CLI's Diagnostics show it: each resource's error, then the
        stack's (`update failed`); empty when the engine reported none."""
        found = sorted(self.errors, key=lambda e: e[0] == "" or "pulumi:pulumi:Stack" in e[0])
        lines = []
        for urn, message in found:
            where = urn.rsplit("::", 1)[-1] if urn else "stack"
            lines.append(f"{where}: {message}")
        return "\n".join(lines)


class StepCollector(EngineEvents):
    """The steps of a preview or refresh preview, from the engine's `resOutputsEvent`s.

    Their metadata carries the step's op (for a refresh, the result of the read: update,
    delete or same, where `resourcePreEvent` says "refresh"), urn, type, the changed keys and
    the old and new state, secrets shown as "[secret]" by the CLI. A provider that names no
    changed keys (the dynamic provider host never does) gets the keys the CLI itself would
    show: the inputs that differ (preview), or the inputs whose output value differs (refresh).
    """

    def __init__(self, on_output: OnOutput, on_engine: Callable[[bool], None] = lambda _r: None):
        super().__init__(on_output, on_engine)
        self._steps: dict[str, CheckStep] = {}
        self._order: dict[str, int] = {}  # urn -> when its first step began

    def __call__(self, event: Any) -> None:
        super().__call__(event)
        pre = getattr(event, "resource_pre_event", None)
        if pre is not None:
            self._order.setdefault(pre.metadata.urn, len(self._order))
        outputs = getattr(event, "res_outputs_event", None)
        if outputs is None:
            return
        meta = outputs.metadata
        if is_default_provider(meta.urn):
            return
        op = op_name(meta.op)
        old, new = meta.old, meta.new
        old_outputs = dict(old.outputs or {}) if old is not None else None
        new_outputs = dict(new.outputs or {}) if new is not None else None
        keys = list(meta.diffs or []) or list(meta.detailed_diff or {})
        if op in REPLACEMENT_OPS:
            earlier = self._steps.get(meta.urn)
            if op == "delete-replaced" and earlier is not None:
                return  # the old resource's deletion: part of the replace already recorded
            op = "replace"
            keys = keys or list(meta.keys or [])
        if not keys and op in ("update", "replace"):
            keys = _fallback_keys(old, new, old_outputs, new_outputs)
        top = sorted({key.split(".")[0].split("[")[0] for key in keys})
        self._steps[meta.urn] = CheckStep(meta.urn, meta.type, op, top, old_outputs, new_outputs)

    def steps(self) -> list[CheckStep]:
        """In the order their steps began (a component's outputs come only at its end)."""
        return sorted(self._steps.values(), key=lambda s: self._order.get(s.urn, len(self._order)))


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


def describe_event(event: Any) -> str | None:
    """Engine events worth a line of their own: failed steps, error diagnostics, the summary."""
    failed = getattr(event, "res_op_failed_event", None)
    if failed is not None:
        return f"[event] failed: {op_name(failed.metadata.op)} {failed.metadata.urn}"
    diag = getattr(event, "diagnostic_event", None)
    if diag is not None and str(diag.severity).startswith("error"):
        where = f" {diag.urn}" if diag.urn else ""
        return f"[event] error{where}: {diag.message.strip()}"
    summary = getattr(event, "summary_event", None)
    if summary is not None:
        return f"[event] summary: {dict(summary.resource_changes)} in {summary.duration_seconds}s"
    return None
