"""The test engine: a stand-in for the Pulumi engine, the one boundary we cannot run here.

No Pulumi CLI exists on these machines, so the program runs in-process under Pulumi's mock
runtime. This engine's `new_resource` does what the real engine and providers would:
- RandomUuid / RandomBytes get real random values (crypto-strength, like the provider's);
- dynamic resources are executed for real: the pickled provider in `__provider` is unpickled,
  configured with the stack config, checked and created against PostgreSQL;
- DigitalOcean (the other true boundary) is faked: a droplet gets a numeric id and an IP.
It records every input and output it sees, with the engine's secret markers, so tests can check
where secrets travel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import runpy
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill  # type: ignore[import-untyped]
import pulumi
import yaml
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config as DynamicConfig
from pulumi.runtime import mocks, rpc

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "citrus-deploy"
PROVIDER_KEY = "__provider"


@dataclass
class Registration:
    typ: str
    name: str
    custom: bool
    inputs: dict[str, Any]  # as the engine received them: secrets still wrapped
    outputs: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    parent: str = ""
    additional_secret_outputs: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)
    provider: Any = None  # the unpickled dynamic provider, if any


def unwrap(value: Any) -> Any:
    """Strips the engine's secret markers, as the engine does before calling a provider."""
    if rpc.is_rpc_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class TestEngine(pulumi.runtime.Mocks):
    """See the module docstring. `config` is the flat stack config (`project:key` -> str)."""

    __test__ = False  # not a pytest class

    def __init__(self, config: dict[str, str] | None = None) -> None:
        self.config = config or {}
        self.registrations: list[Registration] = []
        self.registered_outputs: dict[str, dict[str, Any]] = {}  # urn -> register_outputs
        self._pending: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        reg = Registration(args.typ, args.name, bool(args.custom), args.inputs)
        reg.parent, reg.additional_secret_outputs, reg.ignore_changes = self._pending.pop(
            (args.typ, args.name), ("", [], [])
        )
        self.registrations.append(reg)
        inputs = unwrap(args.inputs)
        if not args.custom:
            reg.id, reg.outputs = "", {}
        elif args.typ == "random:index/randomUuid:RandomUuid":
            value = str(uuid.uuid4())
            reg.id, reg.outputs = value, {**inputs, "result": value}
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = secrets.token_bytes(int(inputs["length"]))
            hex_, b64 = raw.hex(), base64.b64encode(raw).decode()
            reg.id, reg.outputs = "none", {**inputs, "hex": hex_, "base64": b64}
        elif args.typ.startswith("pulumi-python:dynamic"):
            reg.id, reg.outputs = self._create_dynamic(reg, inputs)
        elif args.typ == "digitalocean:index/droplet:Droplet":
            droplet_id = str(random.randint(10**8, 10**9 - 1))
            ip = f"203.0.113.{random.randint(1, 254)}"  # TEST-NET-3: documentation addresses
            reg.id = droplet_id
            reg.outputs = {**inputs, "ipv4Address": ip, "status": "active", "urn": droplet_id}
        else:
            reg.id, reg.outputs = f"{args.name}-id", dict(inputs)
        # The engine's rule: an output is secret when the same-named input was.
        reg.outputs = {
            k: rpc.wrap_rpc_secret(v) if rpc.is_rpc_secret(args.inputs.get(k)) else v
            for k, v in reg.outputs.items()
        }
        return reg.id, reg.outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        raise NotImplementedError(f"the program is not expected to invoke {args.token}")

    def _create_dynamic(self, reg: Registration, inputs: dict[str, Any]) -> tuple[str, dict]:
        provider = dill.loads(base64.b64decode(inputs[PROVIDER_KEY]))
        provider.configure(ConfigureRequest(DynamicConfig(dict(self.config), PROJECT)))
        reg.provider = provider
        props = {k: v for k, v in inputs.items() if k != PROVIDER_KEY}
        checked = provider.check({}, props)
        if checked.failures:
            reasons = "; ".join(f"{f.property}: {f.reason}" for f in checked.failures)
            raise ValueError(f"check failed for {reg.name}: {reasons}")
        result = provider.create(checked.inputs)
        outs = {**(result.outs or {}), PROVIDER_KEY: inputs[PROVIDER_KEY]}
        return result.id, outs

    def by_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.typ == typ]


class RecordingMonitor(mocks.MockMonitor):
    """MockMonitor that also keeps what the real engine would use: parents, secret outputs."""

    def __init__(self, engine: TestEngine) -> None:
        super().__init__(engine)
        self.engine = engine

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        self.engine._pending[(request.type, request.name)] = (
            request.parent,
            list(request.additionalSecretOutputs),
            list(request.ignoreChanges),
        )
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
        self.engine.registered_outputs[request.urn] = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)


def stack_config(stack_file: Path, **overrides: Any) -> dict[str, str]:
    """The flat config the CLI would hand the program: a stack file, plus overrides.

    Values are strings, lists JSON-encoded, as the CLI passes them. Secrets that a real stack
    holds encrypted (githubToken, databaseUrl, digitalocean:token) come in as overrides.
    """
    raw = yaml.safe_load(stack_file.read_text()).get("config", {})
    for key, value in overrides.items():
        raw[key if ":" in key else f"{PROJECT}:{key}"] = value
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in raw.items()
        if value is not None
    }


SECRET_KEYS = [f"{PROJECT}:githubToken", f"{PROJECT}:databaseUrl", "digitalocean:token"]


def run_program(engine: TestEngine, *, stack: str = "dev") -> TestEngine:
    """Runs __main__.py under the test engine with engine.config as the stack config."""
    # Pulumi's runtime runs on the thread's current event loop; an earlier asyncio.run() in
    # this thread (the service tests) leaves none, and get_event_loop() then refuses to make one.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(
        engine, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(engine)
    )
    pulumi.runtime.set_all_config(engine.config, SECRET_KEYS)

    @pulumi.runtime.test
    def program() -> None:
        cwd = os.getcwd()
        os.chdir(ROOT)  # the CLI runs the program from the project directory
        try:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        finally:
            os.chdir(cwd)

    program()
    return engine
