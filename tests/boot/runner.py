"""Boots a cloud-init user_data script for real and collects what it did.

A `Machine` is a throwaway overlay over a cached Debian 12 image (image.py); `boot()` writes a
NoCloud seed with a fresh instance-id, boots it with systemd-nspawn (systemd as PID 1, cloud-init
runs the user data as on a droplet; the host's network is shared, so stand-ins on 127.0.0.1 are
reachable), waits for cloud-init to finish and optionally for a `settle()` condition, always shuts
the container down, and returns a `BootResult` with the logs, journal, files and timings. The
machine's files stay readable through the `Machine` until the `with` block ends; then the
overlay is unmounted and deleted, also on failures and Ctrl-C.

    with Machine("warm") as machine:
        result = machine.boot(user_data, settle=lambda: hub.is_online(agent_id))
        assert result.errors == [] and result.unit_active, result.tails()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from tests.boot.image import image_path, mounts_under, require_commands

UNIT = "citrus-agent.service"
EVIDENCE_FILES = (
    "/opt/citrus-agent/.env",
    "/opt/citrus-agent/.git/config",
    "/etc/systemd/system/citrus-agent.service",
)
CITRUS_INIT_LOG = "/var/log/citrus-init.log"
CLOUD_INIT_OUTPUT_LOG = "/var/log/cloud-init-output.log"
CLOUD_INIT_LOG = "/var/log/cloud-init.log"
APT_HISTORY = "/var/log/apt/history.log"
_LOGS = (CITRUS_INIT_LOG, CLOUD_INIT_OUTPUT_LOG, CLOUD_INIT_LOG, APT_HISTORY)
RESULT_JSON = "/var/lib/cloud/data/result.json"
STATUS_JSON = "/var/lib/cloud/data/status.json"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
SHUTDOWN_TIMEOUT = 30.0
POLL = 0.25
_CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BootError(RuntimeError):
    """The boot did not get as far as cloud-init finishing; `result` holds the evidence."""

    def __init__(self, message: str, result: BootResult) -> None:
        super().__init__(f"{message}\n{result.tails()}")
        self.result = result


class BootTimeout(BootError):
    """cloud-init did not finish within the boot's timeout."""


@dataclass(frozen=True)
class FileInfo:
    """A file in the machine: its bytes, permission bits and owner/group names (the machine's)."""

    path: str
    data: bytes
    mode: int
    owner: str
    group: str

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass
class BootResult:
    """What one boot did. Logs are this boot's part only (files are appended to across boots)."""

    instance_id: str
    started_at: float  # wall clock (time.time()) when nspawn was started
    cloud_init_done: bool
    cloud_init_seconds: float | None  # start -> cloud-init's final stage finished
    settled: bool | None  # None when no settle condition was given
    settle_seconds: float | None  # start -> settle() first returned True
    result_json: dict[str, Any] | None
    status_json: dict[str, Any] | None
    unit_state: str  # `systemctl is-active citrus-agent.service` just before shutdown
    # "clean"; "killed": did not halt within the bound, or nspawn died leaving its container;
    # "exited": nspawn and the container stopped by themselves.
    shutdown: str
    console: str = ""
    citrus_init_log: str = ""
    cloud_init_output_log: str = ""
    cloud_init_log: str = ""
    journal: str = ""  # this boot's whole journal
    unit_journal: str = ""  # this boot's journal of citrus-agent.service
    files: dict[str, FileInfo | None] = field(default_factory=dict)
    apt_debs: dict[str, int] = field(default_factory=dict)  # .debs this boot left in apt's cache
    apt_installed: int = 0  # packages apt installed during this boot (apt's history.log)

    @property
    def errors(self) -> list[str]:
        """cloud-init's error list for this instance (result.json), empty when all went well."""
        if self.result_json is None:
            return ["cloud-init wrote no result.json"]
        return [str(e) for e in self.result_json.get("v1", {}).get("errors", [])]

    @property
    def unit_active(self) -> bool:
        return self.unit_state == "active"

    @property
    def apt_bytes(self) -> int:
        """Bytes of the .deb files apt downloaded during this boot (kept in its cache)."""
        return sum(self.apt_debs.values())

    @property
    def apt_cache_cleaned(self) -> bool:
        """apt installed packages but left no .debs: something deleted them, apt_bytes is void."""
        return self.apt_installed > 0 and not self.apt_debs

    def tails(self, lines: int = 30) -> str:
        """The end of each log, for assertion and error messages."""
        parts = [
            f"boot {self.instance_id}: cloud-init done={self.cloud_init_done} "
            f"errors={self.errors if self.cloud_init_done else '-'} "
            f"{UNIT}={self.unit_state} settled={self.settled} shutdown={self.shutdown}"
        ]
        for name, text in (
            ("console", self.console),
            (CLOUD_INIT_OUTPUT_LOG, self.cloud_init_output_log),
            (CITRUS_INIT_LOG, self.citrus_init_log),
            (f"journal -u {UNIT}", self.unit_journal),
            ("journal", self.journal),
        ):
            tail = text.splitlines()[-lines:]
            parts.append(f"--- {name} (last {len(tail)} lines) ---")
            parts.extend(tail)
        return "\n".join(parts)


class Machine:
    """One throwaway machine: an overlay over the cached image; may be booted several times.

    `image` overrides the flavour's cached image; `trust_host_cas` adds the CAs the host's
    administrator added (see _add_host_cas) so HTTPS works behind a TLS-inspecting proxy.
    """

    def __init__(
        self,
        flavour: str = "warm",
        *,
        hostname: str = "citrus-test",
        image: Path | None = None,
        trust_host_cas: bool = True,
    ) -> None:
        self.flavour = flavour
        self.hostname = hostname
        self._image = image
        self._trust_host_cas = trust_host_cas
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._boots = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Machine:
        require_commands("systemd-nspawn", "nsenter", "mount")
        image = self._image or image_path(self.flavour, build=True)
        cleanup_stale()
        base = Path(os.environ.get("CITRUS_BOOT_TMP", "/var/tmp"))
        self._dir = Path(tempfile.mkdtemp(prefix="citrus-boot-", dir=base))
        try:
            (self._dir / "owner.pid").write_text(str(os.getpid()))
            for sub in ("upper", "work", "root"):
                (self._dir / sub).mkdir()
            options = f"lowerdir={image},upperdir={self.upper},workdir={self._dir / 'work'}"
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
                check=True,
                capture_output=True,
            )
            if self._trust_host_cas:
                self._add_host_cas()
        except BaseException:
            _remove_machine_dir(self._dir)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the container if it still runs, unmount and delete the overlay."""
        if self._proc is not None:
            self._shutdown()
        if self._dir is not None:
            _remove_machine_dir(self._dir)
            self._dir = None

    @property
    def root(self) -> Path:
        """The machine's `/` on the host (the overlay's merged directory)."""
        assert self._dir is not None, "use Machine as a context manager"
        return self._dir / "root"

    @property
    def upper(self) -> Path:
        """What the machine changed relative to the image (the overlay's upper directory)."""
        assert self._dir is not None, "use Machine as a context manager"
        return self._dir / "upper"

    # -- files -----------------------------------------------------------------------------------

    def path(self, path: str) -> Path:
        """Host path of `path` in the machine, following its symlinks inside the machine's root."""
        if not path.startswith("/"):
            raise ValueError(f"machine paths are absolute, got {path!r}")
        parts = list(PurePosixPath(path).parts[1:])
        current, hops = PurePosixPath("/"), 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                current = current.parent
                continue
            host = self.root / str(current / part).lstrip("/")
            if not host.is_symlink():
                current = current / part
                continue
            hops += 1
            if hops > 40:
                raise OSError(f"too many levels of symbolic links in {path}")
            target = PurePosixPath(os.readlink(host))
            parts = list((current / target).parts[1:]) + parts  # an absolute target wins
            current = PurePosixPath("/")
        return self.root / str(current).lstrip("/")

    def exists(self, path: str) -> bool:
        return self.path(path).exists()

    def read_bytes(self, path: str) -> bytes:
        return self.path(path).read_bytes()

    def read_text(self, path: str) -> str:
        return self.path(path).read_text(errors="replace")

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path)))

    def stat(self, path: str) -> FileInfo | None:
        """Bytes, mode and owner (names from the machine's passwd/group); None when absent."""
        host = self.path(path)
        try:
            st = host.lstat()
        except FileNotFoundError:
            return None
        data = host.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        return FileInfo(
            path,
            data,
            stat.S_IMODE(st.st_mode),
            self._name("/etc/passwd", st.st_uid),
            self._name("/etc/group", st.st_gid),
        )

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Put a file into the machine before a boot (root-owned)."""
        host = self.path(path)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data.encode() if isinstance(data, str) else data)
        host.chmod(mode)

    def trust_ca(self, pem: bytes, *, name: str = "citrus-harness") -> None:
        """Add CA certificates to the machine's trust store (for a stand-in served over TLS)."""
        self.write_file(f"/usr/local/share/ca-certificates/{name}.crt", pem)
        subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/update-ca-certificates"],
            env={"PATH": _CONTAINER_PATH},
            check=True,
            capture_output=True,
        )

    def _add_host_cas(self) -> None:
        """Trust the CAs the host's administrator added (none on an ordinary host).

        Where the host reaches the internet through a TLS-inspecting proxy (as on these
        machines), HTTPS from the machine (curl, git, npm) fails with "unknown CA" unless it
        trusts the proxy's CA too; a droplet, which trusts the public CAs, would succeed. Debian's
        own CA list is left as the image has it.
        """
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        try:
            host = _certificates(bundle.read_text())
        except OSError:
            return
        debian = {
            pem
            for crt in Path("/usr/share/ca-certificates/mozilla").glob("*.crt")
            for pem in _certificates(crt.read_text())
        }
        image = (
            set(_certificates(self.read_text(str(bundle)))) if self.exists(str(bundle)) else set()
        )
        extra = [pem for pem in host if pem not in debian and pem not in image]
        if extra:
            self.trust_ca("".join(extra).encode(), name="citrus-host-extra")

    def _name(self, db: str, ident: int) -> str:
        with contextlib.suppress(OSError):
            for line in self.read_text(db).splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2] == str(ident):
                    return fields[0]
        return str(ident)

    # -- running ---------------------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container (as root, with a clean environment)."""
        if self._leader is None:
            raise RuntimeError("the machine is not running")
        return subprocess.run(
            ["nsenter", "-t", str(self._leader), "-a", "--", "/usr/bin/env", "-i",
             f"PATH={_CONTAINER_PATH}", "LANG=C.UTF-8", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )  # fmt: skip

    def boot(
        self,
        user_data: str,
        *,
        instance_id: str | None = None,
        timeout: float = 300,
        settle: Callable[[], bool] | None = None,
        settle_timeout: float = 60,
    ) -> BootResult:
        """Boot with this user_data until cloud-init is done (and `settle()`), then shut down.

        Raises BootTimeout when cloud-init does not finish within `timeout` seconds, BootError when
        the container dies first; both carry the result and show the logs' tails. A settle
        condition that never holds is not an error: `result.settled` is False.
        """
        assert self._dir is not None, "use Machine as a context manager"
        if self._proc is not None:
            raise RuntimeError("the machine is already running")
        instance_id = instance_id or f"iid-{uuid.uuid4()}"
        self._write_seed(user_data, instance_id)
        offsets = {log: self._size(log) for log in _LOGS}
        debs_before = self._debs()
        self._boots += 1
        console = self._dir / f"console-{self._boots}.log"
        started_at, t0 = time.time(), time.monotonic()
        with console.open("wb") as out:
            self._proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), "--boot",
                 "--register=no", "--keep-unit", "--link-journal=no", "--console=pipe",
                 f"--machine=citrus-{uuid.uuid4().hex[:12]}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches only us; we then halt the container once, cleanly.
                start_new_session=True,
            )  # fmt: skip
        (self._dir / "nspawn.pid").write_text(str(self._proc.pid))
        settled: bool | None = None
        settle_seconds = None
        unit_state = "unknown"
        try:
            done = self._wait(lambda: self.root.joinpath(RESULT_JSON.lstrip("/")).exists(), timeout)
            stopped_early = self._proc.poll() is not None
            if done and settle is not None:
                settled = self._wait(settle, settle_timeout)
                settle_seconds = time.monotonic() - t0 if settled else None
            unit_state = self._unit_state()
        finally:
            shutdown = self._shutdown()
        result = self._collect(
            instance_id, started_at, done, settled, settle_seconds, unit_state, shutdown, offsets
        )
        result.console = console.read_text(errors="replace")
        result.apt_debs = {k: v for k, v in self._debs().items() if k not in debs_before}
        if not done:
            if stopped_early:
                raise BootError("the container stopped before cloud-init finished", result)
            raise BootTimeout(f"cloud-init did not finish within {timeout:.0f} s", result)
        return result

    def _write_seed(self, user_data: str, instance_id: str) -> None:
        meta = f"instance-id: {instance_id}\nlocal-hostname: {self.hostname}\n"
        self.write_file(f"{SEED_DIR}/user-data", user_data, 0o600)
        self.write_file(f"{SEED_DIR}/meta-data", meta, 0o600)
        # A previous boot's result would look like this one's.
        for name in (RESULT_JSON, STATUS_JSON):
            self.path(name).unlink(missing_ok=True)

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Poll `condition` until true, the container stops or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return True
            if self._proc is None or self._proc.poll() is not None:
                return False
            if self._leader is None:
                self._find_leader()
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)

    def _find_leader(self) -> None:
        if self._proc is None or self._dir is None:
            return
        self._leader = _find_leader(self._proc.pid)
        if self._leader is not None:  # for cleanup_stale(): nspawn's death does not stop it
            (self._dir / "leader.pid").write_text(str(self._leader))

    def _unit_state(self) -> str:
        if self._leader is None:
            self._find_leader()
        if self._leader is None or self._proc is None or self._proc.poll() is not None:
            return "unknown (container not running)"
        try:
            proc = self.run("systemctl", "is-active", UNIT, timeout=15)
        except subprocess.TimeoutExpired:
            return "unknown (systemctl timed out)"
        return proc.stdout.strip() or f"unknown ({proc.stderr.strip()})"

    def _shutdown(self) -> str:
        """Halt the container (SIGTERM to nspawn = orderly halt); kill it if it takes too long.

        The state is cleared only at the end, so an interrupted shutdown is retried by close():
        nspawn takes a second SIGTERM as "terminate now".
        """
        proc, leader = self._proc, self._leader
        if proc is None:
            return "exited"
        how = "exited"
        if proc.poll() is None:
            how = "clean"
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                how = "killed"
                proc.kill()
                proc.wait(10)
        # The container's init outlives nspawn when nspawn is killed or crashes: PID 1 goes,
        # and with it everything in the container.
        if leader is not None and _is_process(leader, "systemd"):
            os.kill(leader, signal.SIGKILL)
            _wait_gone(leader, 10)
            how = "killed"
        self._proc = self._leader = None
        if self._dir is not None:
            (self._dir / "nspawn.pid").unlink(missing_ok=True)
            (self._dir / "leader.pid").unlink(missing_ok=True)
        return how

    # -- evidence --------------------------------------------------------------------------------

    def _collect(
        self,
        instance_id: str,
        started_at: float,
        done: bool,
        settled: bool | None,
        settle_seconds: float | None,
        unit_state: str,
        shutdown: str,
        offsets: dict[str, int],
    ) -> BootResult:
        status = self._json(STATUS_JSON)
        finished = (status or {}).get("v1", {}).get("modules-final", {}).get("finished")
        cloud_init_seconds = finished - started_at if done and finished else None
        logs = {log: self._read_from(log, offsets[log]) for log in _LOGS}
        return BootResult(
            instance_id=instance_id,
            started_at=started_at,
            cloud_init_done=done,
            cloud_init_seconds=cloud_init_seconds,
            settled=settled,
            settle_seconds=settle_seconds,
            result_json=self._json(RESULT_JSON) if done else None,
            status_json=status,
            unit_state=unit_state,
            shutdown=shutdown,
            citrus_init_log=logs[CITRUS_INIT_LOG],
            cloud_init_output_log=logs[CLOUD_INIT_OUTPUT_LOG],
            cloud_init_log=logs[CLOUD_INIT_LOG],
            journal=self.journal(),
            unit_journal=self.journal("-u", UNIT),
            files={p: self.stat(p) for p in EVIDENCE_FILES},
            apt_installed=_count_installed(logs[APT_HISTORY]),
        )

    def journal(self, *args: str) -> str:
        """The last boot's journal (journalctl arguments may filter it), read from the host."""
        directory = self.path("/var/log/journal")
        argv = ["--no-pager", "-q", "-o", "short-precise", "-b", *args]
        if shutil.which("journalctl"):
            cmd = ["journalctl", "-D", str(directory), *argv]
        else:  # the machine's own journalctl, on its own files
            cmd = ["chroot", str(self.root), "journalctl", "-D", "/var/log/journal", *argv]
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
        return proc.stdout.decode(errors="replace")

    def _json(self, path: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.read_bytes(path))
        except (OSError, ValueError):
            return None
        return data

    def _size(self, path: str) -> int:
        try:
            return self.path(path).stat().st_size
        except OSError:
            return 0

    def _read_from(self, path: str, offset: int) -> str:
        try:
            with self.path(path).open("rb") as f:
                if f.seek(0, os.SEEK_END) >= offset:
                    f.seek(offset)
                else:  # truncated or replaced since: all of it is this boot's
                    f.seek(0)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _debs(self) -> dict[str, int]:
        archives = self.path("/var/cache/apt/archives")
        if not archives.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in archives.glob("*.deb")}


def _certificates(bundle: str) -> list[str]:
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", bundle, re.S)
    return [pem + "\n" for pem in pems]


def _count_installed(history: str) -> int:
    """Packages in the `Install:` lines of apt's history.log ("pkg:arch (version[, automatic])")."""
    return sum(
        len(re.findall(r"[^\s,]+:[a-z0-9]+ \(", line))
        for line in history.splitlines()
        if line.startswith("Install: ")
    )


def _find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1 as the host sees it: nspawn's descendant whose innermost pid is 1.

    nspawn records it with machined, which this host does not run (--register=no).
    """
    parents: dict[int, int] = {}
    inner_one: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
            nspid = re.search(r"^NSpid:(.*)$", status, re.M)
            if ppid:
                parents[int(entry.name)] = int(ppid.group(1))
            if nspid and len(nspid.group(1).split()) > 1 and nspid.group(1).split()[-1] == "1":
                inner_one.add(int(entry.name))
    for pid in inner_one:
        p = pid
        while p in parents and p > 1:
            p = parents[p]
            if p == nspawn_pid:
                return pid
    return None


def _remove_machine_dir(path: Path) -> None:
    """Unmount the overlay and delete the machine's directory, never through a mount."""
    for point in mounts_under(path):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    if mounts_under(path):
        raise RuntimeError(f"cannot unmount below {path}; left in place")
    shutil.rmtree(path, ignore_errors=True)


def cleanup_stale() -> None:
    """Remove machines whose harness process died (SIGKILL, crash) without cleaning up."""
    base = Path(os.environ.get("CITRUS_BOOT_TMP", "/var/tmp"))
    for d in base.glob("citrus-boot-*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        # The container's init outlives a killed nspawn (no parent-death signal): kill both.
        for name, comm in (("leader.pid", "systemd"), ("nspawn.pid", "systemd-nspawn")):
            with contextlib.suppress(OSError, ValueError):
                pid = int((d / name).read_text())
                if _is_process(pid, comm):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 10)
        with contextlib.suppress(RuntimeError):
            _remove_machine_dir(d)


def _is_process(pid: int, comm: str) -> bool:
    """Whether `pid` is alive and runs `comm` (not a zombie, not a recycled pid)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    name = re.search(r"^Name:\s+(.*)$", status, re.M)
    state = re.search(r"^State:\s+(\S)", status, re.M)
    return bool(name and name.group(1) == comm and state and state.group(1) != "Z")


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
