"""The stand-in deployer (CITRUS_DEPLOYER=test-engine): the program under the engine stand-in."""

from __future__ import annotations

import base64
import importlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citrus.errors import CitrusError
from service.deployer import DeployError, OnOutput, StackConfig, looks_transient


class StandInDeployer:
    """Stand-in for the Pulumi engine and DigitalOcean; see the module docstring.

    It keeps a small state file per stack (under `<backend dir>/test-engine/`, like Pulumi's
    checkpoint after each step), so a retried `up` reuses what an interrupted one created and
    `destroy` can run the pickled row providers' `delete`, as Pulumi does. The state holds the
    agent key in clear: it is for development and tests, never for real servers.
    """

    __test__ = False

    def __init__(self, state_dir: Path, *, step_delay: float = 0.0) -> None:
        self.state_dir = state_dir
        self.step_delay = step_delay
        self._lock = threading.Lock()

    def _path(self, stack: str) -> Path:
        return self.state_dir / f"{stack}.json"

    def _load(self, stack: str) -> dict[str, Any]:
        path = self._path(stack)
        if path.exists():
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
        return {"resources": {}}

    def _save(
        self, stack: str, state: dict[str, Any], key: str | None = None, entry: Any = None
    ) -> None:
        # The mock runtime registers resources from several threads at once.
        with self._lock:
            if key is not None:
                state["resources"][key] = entry
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path = self._path(stack)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            tmp.replace(path)

    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        run_program = _test_engine().run_program
        state = self._load(stack)
        engine = _StatefulEngine(
            {k: v.value for k, v in config.items()},
            state=state,
            save=lambda key, entry: self._save(stack, state, key, entry),
            on_output=on_output,
            step_delay=self.step_delay,
        )
        on_output(f"Updating ({stack}) with the test engine (no Pulumi CLI, DigitalOcean faked)")
        started = time.monotonic()
        try:
            run_program(engine, stack=stack)
        except Exception as exc:
            text = _program_error(exc)
            raise DeployError(text, transient=looks_transient(text)) from None
        outputs: dict[str, Any] = next(
            (v for k, v in engine.registered_outputs.items() if k.endswith("::agent-server")), {}
        )
        on_output(f"Update succeeded in {time.monotonic() - started:.1f}s")
        return {k: v for k, v in outputs.items() if isinstance(v, str | int | float | bool)}

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        import dill
        from pulumi.dynamic import ConfigureRequest
        from pulumi.dynamic.config import Config as DynamicConfig

        engine = _test_engine()
        PROJECT, PROVIDER_KEY, unwrap = engine.PROJECT, engine.PROVIDER_KEY, engine.unwrap  # noqa: N806

        state = self._load(stack)
        if not state["resources"]:
            on_output(f"stack {stack} has no resources: nothing to destroy")
            self._path(stack).unlink(missing_ok=True)
            return
        flat = {k: v.value for k, v in config.items()}
        for key in reversed(list(state["resources"])):
            saved = state["resources"][key]
            typ, name = key.split("::", 1)
            outputs = unwrap(saved["outputs"])
            if typ.startswith("pulumi-python:dynamic") and PROVIDER_KEY in outputs:
                # As Pulumi does: the provider pickled into state at create time deletes.
                # The state file is our own (mode 0600), as trusted as Pulumi's checkpoint.
                provider = dill.loads(base64.b64decode(outputs[PROVIDER_KEY]))  # noqa: S301
                provider.configure(ConfigureRequest(DynamicConfig(flat, PROJECT)))
                try:
                    provider.delete(saved["id"], outputs)
                except CitrusError as exc:
                    raise DeployError(
                        f"deleting {name}: {exc}", transient=_db_unreachable(exc)
                    ) from None
            time.sleep(self.step_delay)
            del state["resources"][key]
            self._save(stack, state)
            on_output(f" -  {typ} {name} deleted")
        self._path(stack).unlink(missing_ok=True)
        on_output("Destroy succeeded")


def _db_unreachable(exc: BaseException) -> bool:
    from citrus.errors import DatabaseUnreachable

    return isinstance(exc, DatabaseUnreachable)


def _program_error(exc: BaseException) -> str:
    """The program's own message (e.g. `invalid configuration ...`), without Python noise."""
    text = str(exc).strip() or type(exc).__name__
    return text.replace("Program failed with an unhandled exception:", "").strip()


def _test_engine() -> Any:
    """tests/engine.py, imported at run time: only the child process needs it (it loads
    Pulumi's mock runtime), and it stays outside the service's type-checked code."""
    return importlib.import_module("tests.engine")


def _make_stateful_engine() -> type:
    TestEngine = _test_engine().TestEngine  # noqa: N806

    class StatefulEngine(TestEngine):  # type: ignore[misc,valid-type]
        """TestEngine that checkpoints each created resource and reuses it on the next run."""

        def __init__(
            self,
            config: dict[str, str],
            *,
            state: dict[str, Any],
            save: Callable[[str, Any], None],
            on_output: OnOutput,
            step_delay: float,
        ) -> None:
            super().__init__(config)
            self.state = state
            self.save = save
            self.on_output = on_output
            self.step_delay = step_delay

        def new_resource(self, args: Any) -> tuple[str | None, dict[str, Any]]:
            Registration = _test_engine().Registration  # noqa: N806
            key = f"{args.typ}::{args.name}"
            saved = self.state["resources"].get(key)
            if saved is not None:
                self._pending.pop((args.typ, args.name), None)
                reg = Registration(args.typ, args.name, bool(args.custom), args.inputs)
                reg.id, reg.outputs = saved["id"], saved["outputs"]
                self.registrations.append(reg)
                self.on_output(f"    {args.typ} {args.name} unchanged")
                return saved["id"], saved["outputs"]
            self.on_output(f" +  {args.typ} {args.name} creating")
            if args.custom and self.step_delay:
                time.sleep(self.step_delay)
            id_, outputs = super().new_resource(args)
            self.save(key, {"id": id_, "outputs": outputs})
            self.on_output(f" +  {args.typ} {args.name} created")
            return id_, outputs

    return StatefulEngine


def _StatefulEngine(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (a class, built lazily)
    # tests.engine imports pulumi's mock runtime; only the child process needs it.
    return _make_stateful_engine()(*args, **kwargs)
