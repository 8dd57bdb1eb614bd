"""The engine stand-in's model: its errors, a stack's config, the checkpoint's resources, the
steps and results of an operation, and the shapes of the engine's events."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citrus_deploy.standin.wire import (
    Props,
    is_secret,
    reveal,
    secret,
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


@dataclass(frozen=True)
class Diffed:
    """A Diff's verdict as the engine uses it: the op, the replace keys, the changed keys and
    their kinds (what the provider named)."""

    op: str
    keys: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    detailed: dict[str, Any] | None = None


def is_default_provider(urn: str) -> bool:
    parts = urn.split("::")
    return parts[2].startswith(PROVIDER_PREFIX) and parts[-1].startswith("default")


def now() -> str:
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
