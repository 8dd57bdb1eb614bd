"""The Python SDK's dynamic provider host, started and spoken to as the Pulumi engine does.

The engine runs the `pulumi-python` resource plugin (`python -u -m pulumi.dynamic <engine
address>`) in the project directory with PULUMI_PROJECT set, reads the port it prints, and
talks the ResourceProvider gRPC protocol to it: Configure with the whole stack config, then
Check/Diff/Create/Read/Update/Delete with properties marshalled the engine's way (secrets
stripped, since the host answers acceptSecrets=False; unknowns kept in Check and Diff during a
preview). Nothing of our provider runs in this process: the host unpickles `__provider` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from citrus_deploy.standin.wire import Props, from_struct, reveal, to_struct

START_TIMEOUT = 30.0
CALL_TIMEOUT = 120.0


class ProviderError(Exception):
    """A provider call failed; `detail` is what the provider said (for a dynamic provider, the
    host's traceback, whose last line is the exception)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class Diff:
    changes: bool | None  # None: the provider does not know (DIFF_UNKNOWN)
    replaces: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    # The keys the provider names as changed (DiffResponse.diffs): a bridged provider names
    # them, the dynamic provider host never does.
    changed: list[str] = field(default_factory=list)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


class ProviderHost:
    """One `python -m pulumi.dynamic` process; `close()` (or `with`) stops it."""

    def __init__(
        self,
        project_dir: Path,
        project: str,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        environ = {**(env if env is not None else os.environ), "PULUMI_PROJECT": project}
        self.proc = subprocess.Popen(
            # The engine passes its own address; the host ignores it.
            [python, "-u", "-m", "pulumi.dynamic", "127.0.0.1:0"],
            cwd=project_dir,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().decode().strip()
        if not first.isdigit():
            self.close()
            raise ProviderError(f"the dynamic provider host did not start: {self._stderr_tail()}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{first}")
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT)
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)

    def __enter__(self) -> ProviderHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return _last_line(self._stderr.read().decode(errors="replace")) or "no output"

    def _call(self, method: str, request: Any, urn: str) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            detail = exc.details() or str(exc)
            what = f"{method} of {urn}" if urn else method
            raise ProviderError(f"{what} failed: {_last_line(detail)}", detail) from None

    # -- the ResourceProvider protocol, engine side ----------------------------------------------

    def configure(self, config: Props) -> None:
        """`config`: the whole stack config, namespaced keys, secrets marked (the engine sends
        them, the host unwraps them)."""
        variables = {k: str(reveal(v)) for k, v in config.items()}
        request = provider_pb2.ConfigureRequest(
            args=to_struct(config),
            variables=variables,
            acceptSecrets=True,
            acceptResources=True,
            sends_old_inputs=True,
            sends_old_inputs_to_delete=True,
        )
        response = self._call("Configure", request, "")
        self.accepts_secrets = bool(response.acceptSecrets)
        self.supports_preview = bool(response.supportsPreview)

    def check(self, urn: str, olds: Props, news: Props) -> tuple[Props, list[tuple[str, str]]]:
        request = provider_pb2.CheckRequest(urn=urn, olds=to_struct(olds), news=to_struct(news))
        response = self._call("Check", request, urn)
        failures = [(f.property, f.reason) for f in response.failures]
        return from_struct(response.inputs), failures

    def diff(self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props) -> Diff:
        request = provider_pb2.DiffRequest(
            id=id_,
            urn=urn,
            olds=to_struct(old_outputs),
            news=to_struct(news),
            old_inputs=to_struct(old_inputs),
        )
        response = self._call("Diff", request, urn)
        changes = {
            provider_pb2.DiffResponse.DIFF_NONE: False,
            provider_pb2.DiffResponse.DIFF_SOME: True,
        }.get(response.changes)
        return Diff(
            changes,
            list(response.replaces),
            bool(response.deleteBeforeReplace),
            list(response.diffs),
        )

    def create(self, urn: str, props: Props, *, preview: bool = False) -> tuple[str, Props]:
        request = provider_pb2.CreateRequest(urn=urn, properties=to_struct(props), preview=preview)
        response = self._call("Create", request, urn)
        return response.id, from_struct(response.properties)

    def read(
        self, urn: str, id_: str, outputs: Props, inputs: Props
    ) -> tuple[str, Props, Props | None]:
        request = provider_pb2.ReadRequest(
            id=id_, urn=urn, properties=to_struct(outputs), inputs=to_struct(inputs)
        )
        response = self._call("Read", request, urn)
        new_inputs = from_struct(response.inputs) if response.HasField("inputs") else None
        return response.id, from_struct(response.properties), new_inputs

    def update(
        self, urn: str, id_: str, old_outputs: Props, news: Props, old_inputs: Props
    ) -> Props:
        request = provider_pb2.UpdateRequest(
            id=id_,
            urn=urn,
            olds=to_struct(old_outputs),
            news=to_struct(news),
            old_inputs=to_struct(old_inputs),
        )
        return from_struct(self._call("Update", request, urn).properties)

    def delete(self, urn: str, id_: str, outputs: Props, inputs: Props) -> None:
        request = provider_pb2.DeleteRequest(
            id=id_, urn=urn, properties=to_struct(outputs), old_inputs=to_struct(inputs)
        )
        self._call("Delete", request, urn)
