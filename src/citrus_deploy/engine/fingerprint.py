"""What makes up the Pulumi program, and one hash of it.

A change to any of these can change what `pulumi up` does to every stack, so GitOps marks every
server changed when the hash differs from the one recorded at its last apply. The worker records
the hash of the program it ran; `citrus-deploy gitops plan` hashes the program it would run. The
program is the `citrus_deploy.program` package (its code, templates and project files) and the
modules of the package root it imports, plus the versions of the libraries it runs on: nothing
else of citrus-deploy, so a change to the service, GitOps or their SQL marks no server.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # citrus_deploy/
# The package root's modules the program imports (tests/unit/test_fingerprint.py checks that
# these and the program package are exactly what a run of the program loads).
ROOT_MODULES = ("__init__.py", "errors.py", "database.py")
DEPENDENCIES = ("pulumi", "pulumi-digitalocean", "pulumi-random", "psycopg", "jinja2", "pyyaml")
_SKIPPED_PARTS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})


def program_files(package: Path = PACKAGE) -> list[Path]:
    """The program's files under `package` (a citrus_deploy directory), sorted by their
    relative path."""
    found = [package / name for name in ROOT_MODULES if (package / name).is_file()]
    for path in (package / "program").rglob("*"):
        if path.is_file() and hashed(path.relative_to(package)):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(package).as_posix())


def hashed(relative: Path) -> bool:
    """Whether a file of the program (by its path under the package, or any path ending so)
    counts in the hash: compiled files and their caches do not."""
    return (
        not _SKIPPED_PARTS.intersection(relative.parts) and relative.suffix not in _SKIPPED_SUFFIXES
    )


def dependency_versions() -> list[str]:
    """`name==version` of each library the program runs on, as installed here."""
    found = []
    for name in DEPENDENCIES:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}==(not installed)")
    return found


def program_hash(package: Path = PACKAGE) -> str:
    """sha256 over each program file's relative path and content, then the libraries'
    versions: 64 hex characters."""
    digest = hashlib.sha256()
    for path in program_files(package):
        name = path.relative_to(package).as_posix().encode()
        content = path.read_bytes()
        digest.update(b"%d:%s%d:" % (len(name), name, len(content)))
        digest.update(content)
    for pinned in dependency_versions():
        digest.update(pinned.encode() + b"\n")
    return digest.hexdigest()
