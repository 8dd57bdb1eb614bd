"""`up`, `preview`, `destroy` and `refresh`, in the order the real CLI runs them.

Traced to pulumi/pulumi `pkg/cmd/pulumi/operations/{up,preview,destroy,refresh}.go` and
`pkg/backend/diy/backend.go` (Update, apply):
1. the stack must exist (exit 6); the secrets manager is found, which may write the stack file;
2. the stack config is merged with the project's defaults and, for up and preview (destroy and
   refresh only with --run-program), checked against its types: `error: validating stack
   config: ...` on stderr, exit 1, before anything else;
3. up, destroy and refresh take the stack's lock (preview and --preview-only take none), then
   the banner is printed and the checkpoint read;
4. the SIGTERM/SIGINT handler exists only while the engine runs (`pkg/backend/
   cancellation_scope.go`): a first signal cancels (in-flight steps finish, `update canceled`,
   exit 1), a second terminates (`update cancelled`, exit 8). Outside it the process dies by the
   signal, and a lock taken is left behind;
5. a failed update prints its errors only in the display's Diagnostics on stdout and exits 1 with
   nothing on stderr (a bail, `pkg/cmd/pulumi/cmd/exit_codes.go`);
6. after the engine, the update is added to the history, then the lock is released.

Differs from the real CLI: the program runs in this process under the engine stand-in
(standin.engine), not in the virtualenv's interpreter; a missing virtualenv is refused where the
real CLI would create it and install requirements.txt into it. CITRUS_STANDIN_DELAY=
"locked=<s>,history=<s>" holds the process in the windows outside the engine after it took the
lock, so that tests can signal it there; CITRUS_STANDIN_STEP_DELAY slows each provider call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from citrus_deploy.standin.cli.backend import Backend, passphrase
from citrus_deploy.standin.cli.events import EventLog
from citrus_deploy.standin.cli.project import CliError, Project, StackFile, merged_config
from citrus_deploy.standin.engine import EngineError, StackConfig

BANNERS = {
    "up": "Updating",
    "preview": "Previewing update",
    "destroy": "Destroying",
    "refresh": "Refreshing",
    "refresh-preview": "Previewing refresh",
}
NON_INTERACTIVE = (
    "--yes or --skip-preview or --preview-only must be passed in to proceed when running in "
    "non-interactive mode"
)


class Bail(CliError):
    """A failed or cancelled operation: its errors are in the display; exit 1, stderr empty."""

    def __init__(self) -> None:
        super().__init__("", 1)


class Terminated(BaseException):
    """A second signal while the engine runs: stop at once (context.Canceled)."""


def _delay(phase: str) -> None:
    """CITRUS_STANDIN_DELAY=phase=seconds,...: a pause at a window outside the engine."""
    for part in os.environ.get("CITRUS_STANDIN_DELAY", "").split(","):
        name, _, seconds = part.partition("=")
        if name == phase and seconds:
            time.sleep(float(seconds))


class CancellationScope:
    """The signal handler of an engine run: installed when the engine starts (its prelude
    event), removed when it ends (its summary), both on the main thread."""

    def __init__(self, engine_cancel: Callable[[], None], *, preview: bool, log: EventLog) -> None:
        self.engine_cancel = engine_cancel
        self.preview = preview
        self.log = log
        self.signals = 0

    def on_event(self, event: dict[str, Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if "preludeEvent" in event:
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)
        elif "summaryEvent" in event:
            self.close()

    def close(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        term = signum == signal.SIGTERM
        name = "SIGTERM" if term else "^C"
        if self.signals > 1:
            print(f"{name} received; terminating", flush=True)
            raise Terminated
        again = "send SIGTERM again" if term else "press ^C again"
        message = (
            f"{name} received; cancelling. If you would like to terminate immediately, {again}.\n"
        )
        if not self.preview:
            message += (
                "Note that terminating immediately may lead to orphaned resources and other "
                "inconsistencies.\n"
            )
        print(message, end="", flush=True)
        self.log.send({"stdoutEvent": {"message": message, "color": "never"}})
        self.engine_cancel()


def run(kind: str, flags: dict[str, Any], stack: str, project: Project, backend: Backend) -> int:
    preview_only = bool(flags.get("--preview-only"))
    run_program = flags.get("--run-program") == "true"
    confirmed = flags.get("--yes") or flags.get("--skip-preview")
    if kind in ("up", "destroy", "refresh") and not preview_only and not confirmed:
        raise CliError(NON_INTERACTIVE, 2)
    backend.require(stack)
    stack_file = StackFile.load(project.stack_file(stack))
    crypter = backend.secrets_manager(stack, stack_file)
    validate = kind in ("up", "preview") or run_program
    config = merged_config(
        project, stack, stack_file.config, crypter.decrypt_text, validate=validate
    )
    runs_program = kind in ("up", "preview") or run_program
    pwd = project.pwd()
    if runs_program:
        _check_virtualenv(project)
    values = {key: value.program_text(crypter.decrypt_text) for key, value in config.items()}
    engine_config = StackConfig(values, frozenset(k for k, v in config.items() if v.secure))
    mode = "refresh-preview" if kind == "refresh" and preview_only else kind
    locking = mode in ("up", "destroy", "refresh")
    started = time.time()
    with backend.locked(stack) if locking else contextlib.nullcontext():
        _delay("locked")
        outcome = _run_engine(
            mode, flags, stack, engine_config, pwd, backend, crypter.state(), run_program
        )
        _delay("history")
        if locking:
            backend.add_history(
                stack, _history_entry(mode, started, stack_file, outcome.get("summary"))
            )
    if outcome["failed"]:
        raise Bail
    return 0


def _run_engine(
    mode: str,
    flags: dict[str, Any],
    stack: str,
    config: StackConfig,
    pwd: Path,
    backend: Backend,
    secrets_state: str,
    run_program: bool,
) -> dict[str, Any]:
    def say(line: str) -> None:
        print(line, flush=True)

    with EventLog(flags.get("--event-log")) as log:
        engine_ref: list[Any] = []
        scope = CancellationScope(
            lambda: engine_ref[0].request_cancel(), preview=mode.endswith("preview"), log=log
        )

        def on_event(event: dict[str, Any]) -> None:
            log.send(event)
            scope.on_event(event)

        engine = backend.engine(
            project_dir=pwd,
            on_output=say,
            on_event=on_event,
            step_delay=float(os.environ.get("CITRUS_STANDIN_STEP_DELAY") or 0),
            passphrase=passphrase(),
            secrets_state=secrets_state,
            cloud_file=backend.cloud_file,
        )
        engine_ref.append(engine)
        failed = False
        try:
            if mode == "up":
                engine.up(stack, config)
            elif mode == "preview":
                engine.preview(stack, config)
            elif mode == "destroy":
                engine.destroy(stack, config, run_program=run_program)
            else:
                engine.refresh(stack, config, preview_only=mode == "refresh-preview")
        except EngineError:
            failed = True
        except Terminated:
            scope.close()
            raise CliError(f"{'update' if mode == 'up' else mode} cancelled", 8) from None
        finally:
            scope.close()
        summary = next((e["summaryEvent"] for e in reversed(log.sent) if "summaryEvent" in e), None)
        if failed:
            _print_diagnostics(log.sent, stack, backend.project.name)
    return {"failed": failed, "summary": summary}


def _print_diagnostics(events: list[dict[str, Any]], stack: str, project: str) -> None:
    """The display's Diagnostics section: each resource's errors under `  <type> (<name>):`,
    the stack's last (pkg/backend/display/progress.go)."""
    by_urn: dict[str, list[str]] = {}
    for event in events:
        diag = event.get("diagnosticEvent")
        if diag and diag.get("severity") == "error":
            by_urn.setdefault(diag.get("urn") or "", []).append(diag["message"].rstrip("\n"))
    if not by_urn:
        return
    stack_urn = f"urn:pulumi:{stack}::{project}::pulumi:pulumi:Stack::{project}-{stack}"
    print("Diagnostics:")
    for urn in sorted(by_urn, key=lambda u: u in ("", stack_urn)):
        shown = urn or stack_urn
        typ = shown.split("::")[2].split("$")[-1]
        print(f"  {typ} ({shown.rsplit('::', 1)[-1]}):")
        for message in by_urn[urn]:
            lines = message.splitlines() or [""]
            print(f"    error: {lines[0]}")
            for line in lines[1:]:
                print(f"    {line}")
        print()
    sys.stdout.flush()


def _check_virtualenv(project: Project) -> None:
    """ValidateVenv (sdk/python/cmd/pulumi-language-python/main.go, NewVirtualEnvError)."""
    venv = project.virtualenv()
    if venv is None:
        return
    option = project.runtime_options.get("virtualenv")
    if not venv.exists() or (venv.is_dir() and not any(venv.iterdir())):
        raise CliError(
            f"the pulumi CLI stand-in does not create virtual environments: the real CLI would "
            f"create {venv} (the 'virtualenv' option in Pulumi.yaml, {option!r}) and install "
            "requirements.txt into it"
        )
    if not venv.is_dir():
        raise CliError(
            f"the 'virtualenv' option in Pulumi.yaml is set to {str(option)!r} but it is not a "
            "directory"
        )
    if not (venv / "bin" / "python").exists():
        raise CliError(
            f"The 'virtualenv' option in Pulumi.yaml is set to {str(option)!r}, but {str(venv)!r} "
            "doesn't appear to be a virtual environment; run the following commands to create "
            "the virtual environment and install dependencies into it:\n\n"
            f"    1. python3 -m venv {venv}\n"
            f"    2. {venv}/bin/python -m pip install --upgrade pip setuptools wheel\n"
            f"    3. {venv}/bin/python -m pip install -r requirements.txt\n\n"
            "For more information see: "
            "https://www.pulumi.com/docs/intro/languages/python/#virtual-environments"
        )


def _history_entry(
    mode: str, started: float, stack_file: StackFile, summary: dict[str, Any] | None
) -> dict[str, Any]:
    """An UpdateInfo (sdk/go/common/apitype/history.go), config secrets left out."""
    config = {
        key: {"value": value.to_yaml(), "secret": False}
        if value.secure is None
        else {"secret": True}
        for key, value in stack_file.config.items()
    }
    return {
        "kind": {"up": "update"}.get(mode, mode),
        "startTime": _stamp(started),
        "message": "",
        "environment": {"exec.kind": os.environ.get("PULUMI_EXEC_KIND", "auto.local")},
        "config": config,
        "result": "succeeded" if summary and summary.get("result") == "succeeded" else "failed",
        "endTime": _stamp(time.time()),
        "resourceChanges": (summary or {}).get("resourceChanges") or {},
    }


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


@contextlib.contextmanager
def default_signals() -> Iterator[None]:
    """Go's default disposition outside the scope: SIGINT and SIGTERM end the process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
