"""The Git facts a plan is tied to: the checkout, its commit, uncommitted files, and its name.

Read-only: nothing here changes the repository.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from citrus_deploy.engine import fingerprint as program
from citrus_deploy.errors import CitrusError
from citrus_deploy.gitops.printable import printable

REPOSITORY_ENV = ("CITRUS_GITOPS_REPOSITORY", "GITHUB_REPOSITORY")


class GitError(CitrusError):
    """Git could not answer (not a repository, no commit yet, git missing)."""


def git(directory: Path, *args: str) -> str:
    """Runs `git -C directory args...` and returns its stdout; GitError with git's own words."""
    try:
        # A file name need not be UTF-8: its bytes are kept (surrogateescape), not a crash.
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed (no `git` on PATH)") from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise GitError(f"git {' '.join(args)} in {directory}: {message[-1] if message else ''}")
    return done.stdout


def toplevel(directory: Path) -> Path:
    """The top-level directory of the checkout holding `directory`."""
    return Path(git(directory, "rev-parse", "--show-toplevel").strip())


def head_commit(directory: Path) -> str:
    """The full sha of HEAD."""
    try:
        return git(directory, "rev-parse", "--verify", "HEAD^{commit}").strip()
    except GitError:
        raise GitError(f"the repository holding {directory} has no commit yet") from None


def uncommitted(directory: Path) -> list[str]:
    """Files under `directory` that differ from HEAD (changed, staged, new or deleted), for a
    message: relative to the repository's top level, escaped (a file name may hold a newline).
    """
    out = git(directory, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".")
    return sorted(printable(name) for name in _status_paths(out))


def uncommitted_program(top: Path) -> list[str]:
    """The program's files (engine.fingerprint.program_files) that differ from HEAD in the
    checkout at `top`, when the program a plan hashes is that checkout's (program_root); none
    when it is the installed package, which no commit of this repository holds.

    Ignored files count too (the hash reads them), except what the hash itself skips.
    """
    root = program_root(top)
    if root != top / "src" / "citrus_deploy":
        return []
    paths = [root / "program", *(root / name for name in program.ROOT_MODULES)]
    out = git(
        top,
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--ignored=matching",
        "--",
        *(relative(path, top) for path in paths),
    )
    return sorted(printable(name) for name in _status_paths(out) if program.hashed(Path(name)))


def uncommitted_error(folder: Path, top: Path) -> str | None:
    """What is uncommitted in the fleet folder and in the program, or None: a plan (and an
    apply) is made for a commit, and both are part of it."""
    parts = []
    if fleet := uncommitted(folder):
        parts.append(f"in the fleet folder: {', '.join(fleet)}")
    if program_files := uncommitted_program(top):
        parts.append(f"in the program: {', '.join(program_files)}")
    if not parts:
        return None
    return f"uncommitted changes {'; '.join(parts)} (a plan is made for a commit)"


def _status_paths(out: str) -> list[str]:
    """The paths of `git status --porcelain=v1 -z` output."""
    names: list[str] = []
    entries = iter(out.split("\0"))
    for entry in entries:
        if not entry:
            continue
        names.append(entry[3:])
        if entry[0] in "RC":
            next(entries, None)  # a rename's second path is its source
    return names


def relative(directory: Path, top: Path) -> str:
    """`directory` relative to the checkout's top level, `.` for the top itself."""
    return Path(os.path.relpath(directory.resolve(), top.resolve())).as_posix()


def repository_identity(
    option: str | None, top: Path, environ: Mapping[str, str] = os.environ
) -> str:
    """The name GitOps records with each deployment (see the contract)."""
    if option:
        return option
    for name in REPOSITORY_ENV:
        if environ.get(name):
            return environ[name]
    return str(top.resolve())


def program_root(top: Path) -> Path:
    """The program a plan is for (a citrus_deploy directory): the checkout's, if it is one of
    citrus-deploy, else the installed one."""
    checkout = top / "src" / "citrus_deploy"
    if (checkout / "program").is_dir():
        return checkout
    return program.PACKAGE
