"""The DIY state backend as the Pulumi CLI keeps it on a `file://` URL, and the stack's secrets
manager.

Traced to pulumi/pulumi `pkg/backend/diy/`: a stack exists when its checkpoint
`.pulumi/stacks/<project>/<stack>.json` does (backend.go GetStack, state.go); `stack init` takes
the lock and writes a checkpoint holding only the manifest and the secrets provider's state
(backend.go CreateStack); the lock is `.pulumi/locks/organization/<project>/<stack>/<id>.json`
with pid, user, host and time, checked before and after it is written (lock.go); each update
adds `.pulumi/history/<project>/<stack>/<stack>-<nanos>.history.json`. The secrets manager is
the stack file's salt, else with PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER the checkpoint's
(copied into the stack file), else a new salt (`pkg/cmd/pulumi/stack/secrets.go`
GetSecretsManager, `pkg/secrets/passphrase/manager.go`). The selected stack is recorded in
`$PULUMI_HOME/workspaces/<project>-<sha1 of Pulumi.yaml's path>-workspace.json`
(`pkg/workspace/workspace.go`).

Differs from the real CLI: only `file://` URLs keep state. A `postgres://` one is opened as the
real backend opens it (a ping, `failed to ping PostgreSQL` when nothing answers) and then
refused, so that an unreachable state database fails with the real words; other schemes are
refused.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from citrus_deploy.standin.cli.project import CliError, Project, StackFile
from citrus_deploy.standin.engine import Engine
from citrus_deploy.standin.sealing import INCORRECT_PASSPHRASE, Crypter, WrongPassphrase

TRUE_WORDS = ("1", "t", "T", "TRUE", "true", "True")  # strconv.ParseBool


def env_bool(name: str) -> bool:
    return os.environ.get(name, "") in TRUE_WORDS


def passphrase() -> str:
    """PULUMI_CONFIG_PASSPHRASE, else the file PULUMI_CONFIG_PASSPHRASE_FILE names
    (readPassphrase); non-interactive without either is an error."""
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        return os.environ["PULUMI_CONFIG_PASSPHRASE"]
    path = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if path:
        try:
            return Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise CliError(f"unable to read PULUMI_CONFIG_PASSPHRASE_FILE: {exc}") from None
    raise CliError(
        "passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE "
        "environment variables"
    )


class Backend:
    def __init__(self, url: str, project: Project) -> None:
        self.url = url
        self.project = project
        parts = urlsplit(url)
        if parts.scheme == "postgres":
            _ping_postgres(url)
            raise CliError(
                "the pulumi CLI stand-in keeps state only in file:// backends, not postgres://"
            )
        if parts.scheme != "file":
            raise CliError(
                f"diy URL {url} has an illegal prefix; the pulumi CLI stand-in keeps state only "
                "in file:// backends"
            )
        self.root = Path(os.path.expanduser(parts.path)) / ".pulumi"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            meta = self.root / "meta.yaml"
            if not meta.exists():
                meta.write_text("version: 1\n")
        except OSError as exc:
            raise CliError(f'unable to open state directory "{url}": {exc}') from None
        self.lock_id = str(uuid.uuid4())  # one per backend instance (newDIYBackend)

    # -- layout -------------------------------------------------------------------------------

    @property
    def stacks_dir(self) -> Path:
        return self.root / "stacks" / self.project.name

    def checkpoint(self, stack: str) -> Path:
        return self.stacks_dir / f"{stack}.json"

    def exists(self, stack: str) -> bool:
        return self.checkpoint(stack).exists()

    def engine(self, **kwargs: Any) -> Engine:
        """The engine stand-in over this backend's checkpoints; the lock is the backend's."""
        return Engine(self.stacks_dir, project=self.project.name, locking=False, **kwargs)

    @property
    def cloud_file(self) -> Path:
        """The fake DigitalOcean account: beside the state, shared by all who share it."""
        return Path(
            os.environ.get("CITRUS_STANDIN_CLOUD") or self.root.parent / "digitalocean.json"
        )

    def qualified(self, stack: str) -> str:
        return f"organization/{self.project.name}/{stack}"

    def require(self, stack: str) -> None:
        if not self.exists(stack):  # StackNotFoundError: exit code 6
            raise CliError(f"no stack named '{stack}' found", 6)

    # -- the lock -----------------------------------------------------------------------------

    def _locks(self, stack: str) -> Path:
        return self.root / "locks" / "organization" / self.project.name / stack

    def _lock_error(self, found: list[Path]) -> CliError:
        lines = [
            f"the stack is currently locked by {len(found)} lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`."
        ]
        for path in found:
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                info = {}
            lines.append(
                f"  file://{path}?no_tmp_dir=true: created by {info.get('username')}@"
                f"{info.get('hostname')} (pid {info.get('pid')}) at {info.get('timestamp')}"
            )
        return CliError("\n".join(lines))

    def _check_lock(self, stack: str) -> None:
        mine = f"{self.lock_id}.json"
        found = [p for p in sorted(self._locks(stack).glob("*.json")) if p.name != mine]
        if found:
            raise self._lock_error(found)

    @contextlib.contextmanager
    def locked(self, stack: str) -> Iterator[None]:
        """Holds the stack's lock for the block. A process killed inside it leaves the file."""
        self._check_lock(stack)
        path = self._locks(stack) / f"{self.lock_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": os.getpid(),
            "username": getpass.getuser(),
            "hostname": socket.gethostname(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path.write_text(json.dumps(info))
        try:
            self._check_lock(stack)
        except CliError:
            path.unlink(missing_ok=True)
            raise
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def cancel(self, stack: str) -> None:
        """`pulumi cancel`: every lock of the stack deleted (CancelCurrentUpdate)."""
        for path in self._locks(stack).glob("*.json"):
            path.unlink(missing_ok=True)

    # -- history ------------------------------------------------------------------------------

    def _history(self, stack: str) -> Path:
        return self.root / "history" / self.project.name / stack

    def add_history(self, stack: str, entry: dict[str, Any]) -> None:
        directory = self._history(stack)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{stack}-{time.time_ns()}.history.json").write_text(json.dumps(entry))

    def history(self, stack: str) -> list[dict[str, Any]]:
        """Newest first, numbered from 1 as the backend numbers updates."""
        files = sorted(self._history(stack).glob("*.history.json"))
        entries = [{**json.loads(p.read_text()), "version": i} for i, p in enumerate(files, 1)]
        return list(reversed(entries))

    def remove(self, stack: str) -> None:
        """The checkpoint, its history and its locks go (RemoveStack)."""
        self.checkpoint(stack).unlink(missing_ok=True)
        for directory in (self._history(stack), self._locks(stack)):
            for path in directory.glob("*.json"):
                path.unlink(missing_ok=True)

    # -- the selected stack -------------------------------------------------------------------

    def select(self, stack: str) -> None:
        home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
        digest = hashlib.sha1(str(self.project.path).encode()).hexdigest()  # noqa: S324 (a name)
        path = home / "workspaces" / f"{self.project.name}-{digest}-workspace.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stacks": {self.url: self.qualified(stack)}}))

    # -- secrets ------------------------------------------------------------------------------

    def checkpoint_salt(self, stack: str) -> str | None:
        latest = self.engine().read_checkpoint(stack)
        state = (latest.get("secrets_providers") or {}).get("state") or {}
        salt = state.get("salt")
        return str(salt) if salt else None

    def secrets_manager(self, stack: str, stack_file: StackFile) -> Crypter:
        """GetSecretsManager: the stack file's salt; else, with the fallback, the checkpoint's
        (copied into the file; a failed save is tolerated); else a new salt (written; a failed
        save is fatal). Either save happens before any lock is taken."""
        prefix = "getting stack configuration: get stack secrets manager"
        key = passphrase()
        if stack_file.encryption_salt:
            try:
                return Crypter.from_state(key, stack_file.encryption_salt)
            except WrongPassphrase:
                raise CliError(f"{prefix}: {INCORRECT_PASSPHRASE}") from None
        state = (
            self.checkpoint_salt(stack)
            if env_bool("PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER")
            else None
        )
        if state:
            try:
                crypter = Crypter.from_state(key, state)
            except WrongPassphrase:
                raise CliError(f"{prefix}: {INCORRECT_PASSPHRASE}") from None
            stack_file.encryption_salt = crypter.state()
            with contextlib.suppress(OSError):
                stack_file.save()
            return crypter
        crypter = Crypter.new(key)
        stack_file.encryption_salt = crypter.state()
        try:
            stack_file.save()
        except OSError as exc:
            raise CliError(f"save stack config: {exc}") from None
        return crypter


def _ping_postgres(url: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=5):
            return
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
        # describeBackendURL: the URL as given, credentials included (the real CLI's words)
        raise CliError(
            f'unable to open state database "{url}": failed to ping PostgreSQL: dial tcp '
            f"{host}:{port}: connect: {reason}"
        ) from None
