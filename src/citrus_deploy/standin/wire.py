"""Property values as they cross the wire between the SDK, the engine and providers.

The engine's own form: protobuf Structs holding plain JSON, where a secret is an object marked
with Pulumi's signature key and an unknown (preview) is the sentinel string `rpc.UNKNOWN`. The
stand-in keeps state in this form too, as the real engine's checkpoint does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, struct_pb2
from pulumi.runtime import rpc

SIG = rpc._special_sig_key
SECRET_SIG = rpc._special_secret_sig
UNKNOWN = rpc.UNKNOWN

Props = dict[str, Any]


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG) == SECRET_SIG


def secret(value: Any) -> Any:
    return value if is_secret(value) else {SIG: SECRET_SIG, "value": value}


def reveal(value: Any) -> Any:
    """The value with every secret marker removed: what a provider that does not accept
    secrets receives (the dynamic provider host answers Configure with acceptSecrets=False)."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def _contains(value: Any, found: Callable[[Any], bool]) -> bool:
    if found(value):
        return True
    if isinstance(value, dict):
        return any(_contains(v, found) for v in value.values())
    if isinstance(value, list):
        return any(_contains(v, found) for v in value)
    return False


def contains_secret(value: Any) -> bool:
    return _contains(value, is_secret)


def contains_unknown(value: Any) -> bool:
    return _contains(value, lambda v: v == UNKNOWN)


def annotate_secrets(outs: Props, ins: Props) -> Props:
    """The engine's `annotateSecrets`: an output is secret when the same-named input held one."""
    return {
        key: secret(value) if key in ins and contains_secret(ins[key]) else value
        for key, value in outs.items()
    }


def to_struct(props: Props) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(props)
    return struct


def from_struct(struct: struct_pb2.Struct | None) -> Props:
    if struct is None:
        return {}
    found: Props = json_format.MessageToDict(struct)
    return found
