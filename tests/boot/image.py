"""Debian 12 root filesystems for the boot tests, built once and cached outside the repository.

A boot test must run the rendered script on something that behaves like a fresh DigitalOcean
`debian-12-x64` droplet: systemd as PID 1, cloud-init reading a NoCloud seed, an empty apt cache.
Building such a tree takes a minute or two, so it is cached under
`${CITRUS_IMAGE_CACHE:-/var/cache/citrus-deploy/images}/<flavour>-<key>`, where the key hashes
the whole recipe: change a package or a line of the setup script and the next run rebuilds.
Each boot then runs on a throwaway overlay over the cached tree (see runner.py).

    python -m tests.boot.image build [bare|warm|all]   # build (or find) and print the paths
    python -m tests.boot.image prune                   # delete images of older recipes
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# What a fresh droplet has and our scripts may rely on: systemd + cloud-init, ssh-keygen
# (cloud-init makes host keys with it), a generated en_US.UTF-8 locale (cloud-init 22.4 reports an
# error without it), curl with CA certificates. Never git or nodejs: the script must install them.
BARE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "openssh-client",
    "locales",
    "ca-certificates",
    "curl",
)
# Debian's git and nodejs preinstalled, so a boot skips most apt work: for fast iterations only.
WARM_EXTRA = ("git", "nodejs")

HARNESS_CLOUD_CFG = """\
# Written by the citrus-deploy boot harness (tests/boot/image.py).
# The seed is a NoCloud directory; the container shares the host's network, which cloud-init
# must not try to configure.
datasource_list: [ NoCloud ]
network: {config: disabled}
"""

# Runs inside the debootstrapped tree (chroot, /bin/sh). Inputs come from the environment:
# MIRROR, SECURITY_MIRROR, PACKAGES, KEEP_APT_LISTS (yes|no), HARNESS_CLOUD_CFG.
SETUP_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# Nothing may start inside the build chroot (it has no systemd).
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

cat >/etc/apt/sources.list <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF

apt-get -q update
# One by one in the list, not debootstrap --include, which fails on dependencies here.
# shellcheck disable=SC2086
apt-get -q -y install --no-install-recommends $PACKAGES

echo 'en_US.UTF-8 UTF-8' >/etc/locale.gen
locale-gen
update-locale LANG=en_US.UTF-8

# A persistent journal: the harness reads it from the host after shutdown.
mkdir -p /var/log/journal

mkdir -p /etc/cloud/cloud.cfg.d
printf '%s' "$HARNESS_CLOUD_CFG" >/etc/cloud/cloud.cfg.d/99-harness.cfg

# Keep downloaded .debs after install (Debian's default): the harness counts them. A Docker-style
# "docker-clean" config would delete them and hide what a boot downloaded.
rm -f /etc/apt/apt.conf.d/docker-clean
if grep -rqsi 'Keep-Downloaded-Packages *"\?\(false\|0\|no\)' /etc/apt/apt.conf.d; then
  echo 'apt is configured to delete downloaded packages' >&2
  exit 1
fi

# A fresh machine: systemd makes a machine id at first boot, cloud-init sets the hostname.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/hostname

apt-get clean
if [ "$KEEP_APT_LISTS" = no ]; then
  # As on a fresh droplet: the boot script must run `apt-get update` itself.
  find /var/lib/apt/lists -mindepth 1 -delete
  mkdir -p /var/lib/apt/lists/partial
fi
rm -f /usr/sbin/policy-rc.d
"""


class ImageError(RuntimeError):
    """The image cannot be built or found; the message says what to do."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an image's contents; its hash is the cache key."""

    flavour: str
    packages: tuple[str, ...]
    keep_apt_lists: bool
    mirror: str
    security_mirror: str

    def key(self) -> str:
        text = json.dumps(
            {
                "flavour": self.flavour,
                "suite": SUITE,
                "variant": "minbase",
                "packages": self.packages,
                "keep_apt_lists": self.keep_apt_lists,
                "mirror": self.mirror,
                "security_mirror": self.security_mirror,
                "setup": SETUP_SCRIPT,
                "cloud_cfg": HARNESS_CLOUD_CFG,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "MIRROR": self.mirror,
            "SECURITY_MIRROR": self.security_mirror,
            "PACKAGES": " ".join(self.packages),
            "KEEP_APT_LISTS": "yes" if self.keep_apt_lists else "no",
            "HARNESS_CLOUD_CFG": HARNESS_CLOUD_CFG,
        }


FLAVOURS = ("bare", "warm")


def recipe(flavour: str) -> Recipe:
    mirror, security = host_mirrors()
    if flavour == "bare":
        return Recipe("bare", BARE_PACKAGES, False, mirror, security)
    if flavour == "warm":
        return Recipe("warm", BARE_PACKAGES + WARM_EXTRA, True, mirror, security)
    raise ImageError(f"unknown image flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")


def host_mirrors() -> tuple[str, str]:
    """The Debian and Debian-security mirrors the host's apt uses (the only ones reachable here)."""
    uris: list[str] = []
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0]
            uris += re.findall(r"\b(https?://\S+?)/?(?=\s|$)", line)
    main = next((u for u in uris if u.endswith("/debian")), DEFAULT_MIRROR)
    security = next((u for u in uris if u.endswith("/debian-security")), DEFAULT_SECURITY_MIRROR)
    return main, security


def cache_dir() -> Path:
    return Path(os.environ.get("CITRUS_IMAGE_CACHE", "/var/cache/citrus-deploy/images"))


def image_path(flavour: str, build: bool = True) -> Path:
    """The root filesystem of `flavour` for the current recipe; builds it when missing.

    With build=False a missing image raises ImageError instead (naming the command to build it).
    """
    r = recipe(flavour)
    path = cache_dir() / f"{flavour}-{r.key()}"
    if path.is_dir():
        return path
    if not build:
        raise ImageError(
            f"image {path} is not built: run `python -m tests.boot.image build {flavour}`"
        )
    return _build(r, path)


def require_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ImageError(
            f"missing command(s) {', '.join(missing)}: install the Debian packages "
            "debootstrap and systemd-container (scripts/setup does)"
        )
    if os.geteuid() != 0:
        raise ImageError("building and booting images needs root (debootstrap, mount, nspawn)")


def _build(r: Recipe, final: Path) -> Path:
    require_commands("debootstrap", "chroot")
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder per image at a time; a second one waits and then finds it built.
    with _locked(final.parent / f".{final.name}.lock"):
        if final.is_dir():
            return final
        _remove_stale_builds(final.parent, r.flavour)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{r.flavour}-", dir=final.parent))
        try:
            tmp.chmod(0o755)  # it becomes the machine's `/`; mkdtemp made it 0700
            _run(["debootstrap", "--variant=minbase", SUITE, str(tmp), r.mirror])
            debootstrap_s = time.monotonic() - started
            with _proc_mounted(tmp):
                _run(["chroot", str(tmp), "/bin/sh", "-c", SETUP_SCRIPT], env=r.env())
            seconds = time.monotonic() - started
            info = {
                "flavour": r.flavour,
                "key": r.key(),
                "packages": r.packages,
                "keep_apt_lists": r.keep_apt_lists,
                "mirror": r.mirror,
                "debootstrap_seconds": round(debootstrap_s, 1),
                "build_seconds": round(seconds, 1),
                "bytes": _disk_usage(tmp),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            final.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
            os.rename(tmp, final)  # atomic: a half-built tree never has the final name
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


def image_info(path: Path) -> dict[str, object]:
    """What the build recorded next to the image (timings, size)."""
    data: dict[str, object] = json.loads(path.with_suffix(".json").read_text())
    return data


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise ImageError(f"{argv[0]} failed (exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    """/proc inside the build chroot: some maintainer scripts read it. /dev is debootstrap's."""
    target = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` (deepest first), from the kernel's view of this process."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a leftover /proc or overlay mount)."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], check=False)
    if mounts_under(path):
        raise ImageError(f"refusing to delete {path}: something is still mounted below it")
    shutil.rmtree(path, ignore_errors=True)


def _remove_stale_builds(parent: Path, flavour: str) -> None:
    """Leftovers of builds that were killed; only called while holding the image's lock."""
    for stale in parent.glob(f".build-{flavour}-*"):
        _remove_tree(stale)


def _disk_usage(path: Path) -> int:
    out = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def prune() -> list[Path]:
    """Delete cached images (and leftovers) that no current recipe uses; returns what went.

    Only for when no boot or build is running: a machine's overlay still reads its image.
    """
    keep = {f"{f}-{recipe(f).key()}" for f in FLAVOURS}
    removed = []
    for path in sorted(cache_dir().glob("*")):
        name = path.name.removesuffix(".json").removesuffix(".lock").lstrip(".")
        if name in keep or not name.startswith((*FLAVOURS, "build-")):
            continue
        if path.is_dir():
            _remove_tree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.boot.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find) the cached image(s) and print the paths")
    build.add_argument("flavour", nargs="?", default="all", choices=[*FLAVOURS, "all"])
    sub.add_parser("path", help="print the paths the current recipes would use").add_argument(
        "flavour", nargs="?", default="all", choices=[*FLAVOURS, "all"]
    )
    sub.add_parser("prune", help="delete images that no current recipe uses")
    args = parser.parse_args(argv)
    if args.command == "prune":
        for path in prune():
            print(f"removed {path}")
        return 0
    flavours = FLAVOURS if args.flavour == "all" else (args.flavour,)
    try:
        for flavour in flavours:
            if args.command == "path":
                r = recipe(flavour)
                print(cache_dir() / f"{flavour}-{r.key()}")
                continue
            started = time.monotonic()
            path = image_path(flavour, build=True)
            elapsed = time.monotonic() - started
            info = image_info(path)
            print(
                f"{path}  ({info['bytes']} bytes; built in {info['build_seconds']} s, "
                f"debootstrap {info['debootstrap_seconds']} s; this run {elapsed:.1f} s)"
            )
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
