"""The fleet folder: one `Pulumi.<name>.yaml` per server, read here and checked by the program's
rules (gitops.rules).

A stack file is a regular file of at most MAX_FILE_BYTES, named by a strict pattern, in the YAML
gitops.strict_yaml allows (no aliases, merges, tags or repeated keys); anything else named like
one (a symlink, a directory, a FIFO, an empty file) is an error of that server, so the plan
never takes it for a removed file. Secrets never live in a fleet file (they come from the
pipeline's secret store): a file holding one is refused and the error names the file, line and
key, never the value. Every name and key in an error is escaped (gitops.printable).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from citrus_deploy.gitops import strict_yaml
from citrus_deploy.gitops.credentials import redact
from citrus_deploy.gitops.printable import printable
from citrus_deploy.gitops.rules import Problem, ProgramRules, check_document

_STACK_FILE = re.compile(r"Pulumi\.(?P<name>.+)\.yaml", re.DOTALL)
# What a stack file's server name may hold; the program's own rule (a hostname) is checked
# after, with its own message. Anything else (a newline, escape bytes) is refused by name.
_STACK_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")
NAME_RULE = (
    "not a stack file name: a server name is letters, digits, '.', '_' and '-' "
    "(Pulumi.<server name>.yaml)"
)
# A stack file is a few hundred bytes; reading stops here.
MAX_FILE_BYTES = 64 * 1024
NOT_A_FILE_RULE = "a stack file must be a regular file in the repository"
EMPTY_RULE = (
    "is empty: a fleet file holds `config:` with the server's keys (`config: {}` for a server "
    "with every default)"
)


@dataclass(frozen=True)
class FleetError:
    """One problem with the fleet, printed as `file:line: key: rule`.

    What comes from the repository is made safe here, once: names and keys escaped, anything
    that looks like a credential in a key or rule redacted.
    """

    file: str
    line: int | None
    key: str | None
    rule: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", printable(self.file))
        if self.key is not None:
            object.__setattr__(self, "key", printable(redact(self.key)))
        object.__setattr__(self, "rule", printable(redact(self.rule)))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.rule}" if self.key is None else f"{where}: {self.key}: {self.rule}"


@dataclass(frozen=True)
class StackFile:
    """One server's file: its record config (see the contract) and what is wrong with it."""

    name: str
    path: str  # as shown in messages, e.g. fleet/Pulumi.web-1.yaml
    config: dict[str, Any]
    adopt: bool = False
    errors: tuple[FleetError, ...] = ()


@dataclass
class Fleet:
    """Every stack file of a folder, keyed by the server name as the file writes it."""

    directory: Path
    display: str
    files: dict[str, StackFile] = field(default_factory=dict)
    errors: list[FleetError] = field(default_factory=list)  # errors that belong to no server

    def all_errors(self) -> Iterator[FleetError]:
        yield from self.errors
        for stack in self.files.values():
            yield from stack.errors


# A fleet at least this big is read by several processes: parsing YAML is CPU-bound, and each
# file is independent.
PARALLEL_FROM = 2_000
_CHUNKS_PER_JOB = 4

_Entry = tuple[str, str, str]  # (path, server name, path as shown)


def read_fleet(directory: Path | str, display: str | None = None, *, jobs: int = 1) -> Fleet:
    """Reads every file of `directory`; `display` is how the folder is named in messages.

    `jobs`: processes that parse the files; 0 picks one per CPU for a fleet of PARALLEL_FROM
    files or more, else 1. More than one are forked: never pass it with a connection open.
    """
    folder = Path(directory)
    shown = printable((display if display is not None else str(directory)).rstrip("/") or ".")
    fleet = Fleet(directory=folder, display=shown)
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    stacks: list[_Entry] = []
    unreadable: list[StackFile] = []
    for entry in entries:  # nothing here follows a symlink
        path_shown = f"{shown}/{entry.name}"
        match = _STACK_FILE.fullmatch(entry.name)
        if match is None:
            if entry.name.lower().endswith((".yaml", ".yml")) and not _is_dir(entry):
                rule = "not a stack file: a fleet file is named Pulumi.<server name>.yaml"
                fleet.errors.append(FleetError(path_shown, None, None, rule))
            continue
        if not _STACK_NAME.fullmatch(match["name"]):
            fleet.errors.append(FleetError(path_shown, None, None, NAME_RULE))
            continue
        kind = _not_a_file(entry)
        if kind is not None:
            unreadable.append(_unreadable(match["name"], path_shown, kind))
            continue
        stacks.append((entry.path, match["name"], path_shown))
    by_name: dict[str, list[StackFile]] = {}
    for stack in sorted([*_read_all(stacks, jobs), *unreadable], key=lambda s: s.path):
        by_name.setdefault(stack.name.lower(), []).append(stack)
    for same in by_name.values():
        if len(same) > 1:
            names = ", ".join(Path(s.path).name for s in same)
            rule = f"server names are unique regardless of case: {names} name the same server"
            same = [
                replace(s, errors=(*s.errors, FleetError(s.path, None, None, rule))) for s in same
            ]
        for stack in same:
            fleet.files[stack.name] = stack
    return fleet


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _not_a_file(entry: os.DirEntry[str]) -> str | None:
    """Why a stack file's entry cannot be read as one, or None for a regular file."""
    try:
        if entry.is_symlink():
            return "is a symbolic link"
        if entry.is_dir(follow_symlinks=False):
            return "is a directory"
        if not entry.is_file(follow_symlinks=False):
            return "is not a regular file (a FIFO, socket or device)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def _unreadable(name: str, shown: str, why: str) -> StackFile:
    """An error for the server the name says, so that the plan never takes it for a removal."""
    rule = f"{why}: {NOT_A_FILE_RULE}"
    return StackFile(
        name, shown, {"serverName": name}, False, (FleetError(shown, None, None, rule),)
    )


def _read_all(stacks: list[_Entry], jobs: int) -> list[StackFile]:
    if jobs <= 0:
        jobs = (os.cpu_count() or 1) if len(stacks) >= PARALLEL_FROM else 1
    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _read_chunk(stacks)
    size = -(-len(stacks) // (jobs * _CHUNKS_PER_JOB))
    chunks = [stacks[i : i + size] for i in range(0, len(stacks), size)]
    # fork: the workers start with this process's imports instead of importing them again.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return [stack for chunk in pool.map(_read_chunk, chunks) for stack in chunk]


def _read_chunk(stacks: list[_Entry]) -> list[StackFile]:
    rules = ProgramRules()
    return [read_stack_file(Path(path), name, shown, rules) for path, name, shown in stacks]


class _Unreadable(Exception):
    """The file cannot be read as a stack file; the message is the rule."""


def read_stack_file(
    path: Path, name: str, shown: str, rules: ProgramRules | None = None
) -> StackFile:
    """Parses and checks one file; on any problem, its errors carry line numbers."""

    def refused(*errors: FleetError) -> StackFile:
        return StackFile(name, shown, {"serverName": name}, False, errors)

    try:
        text = _read_text(path)
        document = strict_yaml.load(text)
    except _Unreadable as exc:
        return refused(FleetError(shown, None, None, str(exc)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        return refused(FleetError(shown, line, None, f"not valid YAML: {problem}"))
    except strict_yaml.Refused as exc:
        return refused(*(FleetError(shown, p.line, p.key, p.rule) for p in exc.problems))
    if document.value is None:
        return refused(FleetError(shown, None, None, EMPTY_RULE))
    problems: list[Problem] = []  # (node path, key, rule)
    config, adopt = check_document(document.value, name, problems, rules or ProgramRules())
    if not problems:
        return StackFile(name, shown, config, adopt)
    lines = _Lines(document.root)
    errors = sorted(
        (FleetError(shown, lines.line(node_path), key, rule) for node_path, key, rule in problems),
        key=lambda e: e.line or 0,
    )
    return StackFile(name, shown, config, adopt, tuple(errors))


def _read_text(path: Path) -> str:
    """The file's text: a regular file (never through a symlink: the entry may have changed
    since the folder was listed), at most MAX_FILE_BYTES, UTF-8."""
    try:
        # O_NONBLOCK: a FIFO put in its place opens at once, and is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable(f"is a symbolic link: {NOT_A_FILE_RULE}") from None
        raise _Unreadable(f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable(f"is not a regular file: {NOT_A_FILE_RULE}")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _Unreadable(
            f"is larger than {MAX_FILE_BYTES // 1024} KiB: a stack file is a few keys"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"is not UTF-8 text (byte {exc.start + 1})") from None


class _Lines:
    """Line numbers of a file's nodes, from the tree the file was read from."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: tuple[str | int, ...] | None) -> int | None:
        node = self.root
        if node is None or path is None:
            return None
        line = node.start_mark.line + 1
        for step in path:
            found = self._child(node, step)
            if found is None:
                return line
            key_node, node = found
            line = (key_node or node).start_mark.line + 1
        return line

    @staticmethod
    def _child(node: yaml.Node, step: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                    return key_node, value_node
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(step, int)
            and 0 <= step < len(node.value)
        ):
            return None, node.value[step]
        return None
