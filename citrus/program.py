"""What makes up the Pulumi program, and one hash of it.

A change to any of these files can change what `pulumi up` does to every stack, so GitOps marks
every server changed when the hash differs from the one recorded at its last apply. The worker
records the hash of the program it ran; `python -m gitops plan` hashes the checkout it plans.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Files, and folders taken whole (their files at any depth), relative to the project directory.
PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "requirements.txt")
PROGRAM_DIRS = ("citrus", "components", "cloud_init", "db")
_SKIPPED_PARTS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = frozenset({".pyc", ".pyo"})


def program_files(root: Path = ROOT) -> list[Path]:
    """The program's files under `root`, sorted by their relative path."""
    found = [root / name for name in PROGRAM_FILES if (root / name).is_file()]
    for folder in PROGRAM_DIRS:
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root)
            if (
                path.is_file()
                and not _SKIPPED_PARTS.intersection(relative.parts)
                and path.suffix not in _SKIPPED_SUFFIXES
            ):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def program_hash(root: Path = ROOT) -> str:
    """sha256 over each program file's relative path and content: 64 hex characters."""
    digest = hashlib.sha256()
    for path in program_files(root):
        name = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        digest.update(b"%d:%s%d:" % (len(name), name, len(content)))
        digest.update(content)
    return digest.hexdigest()
