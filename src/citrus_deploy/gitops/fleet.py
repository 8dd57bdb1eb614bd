"""The fleet folder: one `Pulumi.<name>.yaml` per server, read and checked by the program's rules.

A stack file is a regular file of at most MAX_FILE_BYTES, named by a strict pattern, in the YAML
gitops.strict_yaml allows (no aliases, merges, tags or repeated keys); anything else named like
one (a symlink, a directory, a FIFO, an empty file) is an error of that server, so the plan
never takes it for a removed file. Secrets never live in a fleet file (they come from the
pipeline's secret store): a file holding one is refused and the error names the file, line and
key, never the value. Every name and key in an error is escaped (gitops.printable).
"""

from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from citrus_deploy.errors import InvalidValue
from citrus_deploy.gitops import strict_yaml
from citrus_deploy.gitops.credentials import credential_in, redact
from citrus_deploy.gitops.printable import printable
from citrus_deploy.program import config as stack_config
from citrus_deploy.program import validation

PROJECT = "citrus-deploy"
PREFIX = f"{PROJECT}:"
ADOPT_KEY = "gitops:adopt"
PROVIDER_KEYS = frozenset({"digitalocean:apiEndpoint"})
# Secret keys of the program: they come from the pipeline's secret store, never from a file.
SECRET_KEYS = frozenset({f"{PREFIX}githubToken", f"{PREFIX}databaseUrl", "digitalocean:token"})
# Top-level keys `pulumi` writes for a stack with its own secrets provider.
SECRET_TOP_KEYS = frozenset({"secretsprovider", "encryptedkey", "encryptionsalt"})

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

# What the program's validation sees for the values that come from the service, not the file.
# They are valid by the program's rules so only the file's own values can fail. databaseUrl is
# left unset and its "is required" error dropped: it can never be in a file, and parsing a
# placeholder URL was half the cost of each validation.
_STORE_VALUES = {
    "githubToken": "placeholder-github-token",
    "engineWsUrl": "wss://engine.placeholder.invalid",
}
_FROM_STORE_ONLY = frozenset({"databaseUrl"})
_STORE_DO_TOKEN = "placeholder-digitalocean-token"  # noqa: S105 - a placeholder

# (path of the node to point at, or None for the file itself; key as written; rule)
_Problem = tuple[tuple[str | int, ...] | None, str | None, str]

PLACEHOLDER_NAME = "placeholder-server"

SECRET_RULE = "secrets come from the pipeline's secret store, never from a fleet file"  # noqa: S105


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


@functools.cache
def allowed_keys() -> frozenset[str]:
    """The keys a fleet file may hold: the program's declared config, the provider, gitops."""
    return frozenset(key for key, (kind, _) in _key_kinds().items() if kind != "secret")


@functools.cache
def _key_kinds() -> dict[str, tuple[str, str]]:
    """Each key a file may name -> (kind, record key); kind: config | adopt | secret."""
    declared = yaml.safe_load(stack_config.PROJECT_FILE.read_text()).get("config", {})
    kinds = {PREFIX + key: ("config", key) for key in declared}
    kinds.update({key: ("config", key) for key in PROVIDER_KEYS})
    kinds.update({key: ("secret", key) for key in SECRET_KEYS})
    kinds[ADOPT_KEY] = ("adopt", ADOPT_KEY)
    return kinds


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
    problems: list[_Problem] = []  # (node path, key, rule)
    config, adopt = _check_document(document.value, name, problems, rules or ProgramRules())
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


def _check_document(
    document: Any, name: str, problems: list[_Problem], rules: ProgramRules
) -> tuple[dict[str, Any], bool]:
    record: dict[str, Any] = {"serverName": name}
    if not isinstance(document, dict):
        problems.append(((), None, "must be a mapping with a `config:` key"))
        return record, False
    for top in document:
        if top == "config":
            continue
        if isinstance(top, str) and top.lower() in SECRET_TOP_KEYS:
            problems.append(
                (
                    (top,),
                    str(top),
                    "a fleet file has no secrets provider or key: the fleet's secrets come "
                    "from the pipeline's secret store; remove it",
                )
            )
        else:
            problems.append(
                ((top,), str(top), "unknown top-level key: a fleet file holds only `config:`")
            )
    values = document.get("config")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        problems.append((("config",), "config", "must be a mapping of namespaced keys"))
        return record, False

    kinds = _key_kinds()
    refused: set[str] = set()
    adopt = False
    for key, value in values.items():
        kind = kinds.get(key) if isinstance(key, str) else None
        if type(value) is str and kind is not None and kind[0] == "config":
            # The common case, kept short: a plain string for a declared key.
            what = credential_in(value)
            if what is not None:
                problems.append(_credential_problem(key, None, what))
                refused.add(key)
            else:
                record[kind[1]] = value
            continue
        where: tuple[str | int, ...] = ("config", key)
        shown_key = str(key)
        if isinstance(value, dict) and "secure" in value:
            problems.append(
                (where, shown_key, f"holds an encrypted secret (secure:): {SECRET_RULE}")
            )
            refused.add(shown_key)
        elif kind is None:
            hint = f"; did you mean {PREFIX}{key}?" if PREFIX + shown_key in kinds else ""
            problems.append((where, shown_key, f"unknown key{hint}"))
            refused.add(shown_key)
        elif kind[0] == "secret":
            problems.append((where, shown_key, f"is a secret: {SECRET_RULE}"))
            refused.add(shown_key)
        elif (found := _credential_in(value)) is not None:
            problems.append(_credential_problem(shown_key, *found))
            refused.add(shown_key)
        elif kind[0] == "adopt":
            if isinstance(value, bool):
                adopt = value
            else:
                problems.append((where, shown_key, "must be true or false"))
        elif value is not None:  # `key:` with no value is the key left unset, as for the CLI
            record[kind[1]] = _record_value(value)

    server_name = record.get("serverName")
    if f"{PREFIX}serverName" in values and server_name != name:
        problems.append(
            (
                ("config", f"{PREFIX}serverName"),
                f"{PREFIX}serverName",
                f"must equal the file's name ({name!r}): the file name is the server name",
            )
        )
        refused.add(f"{PREFIX}serverName")
    record["serverName"] = name
    for field_name, rule in rules.errors(record, name, refused):
        file_key, path = _file_key(field_name)
        if file_key == f"{PREFIX}serverName" and file_key not in values:
            problems.append((None, None, f"the file name is the server name, which {rule}"))
            continue
        problems.append((path, file_key, rule))
    return record, adopt


def _record_value(value: Any) -> Any:
    """Values as the record keeps them: str, bool, lists; numbers as the CLI passes them."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _cli_value(value: Any) -> str | None:
    """A value as the Pulumi CLI hands it to the program: strings as is, the rest JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


class ProgramRules:
    """The program's own config rules (`citrus.config.load`), for one read of a fleet.

    `load` checks each field on its own value alone, so a file's errors are the union of each
    (key, value)'s errors, remembered for the read: a fleet repeats the same values file after
    file, and a whole `load` per file would cost as much as parsing it.
    tests/gitops/test_fleet.py holds this equal to one whole `load` of the file.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, Any], tuple[tuple[str, str], ...]] = {}

    def errors(self, record: dict[str, Any], name: str, refused: set[str]) -> list[tuple[str, str]]:
        """(field, rule) for each rule the record breaks; `refused` keys were reported already."""
        errors: list[tuple[str, str]] = []
        try:
            # What load applies to serverName, which a record always holds (the file name).
            validation.server_name(name, "serverName")
        except InvalidValue as exc:
            errors.append((exc.field, exc.rule))
        for key, value in record.items():
            if key == "serverName" or (PREFIX + key if ":" not in key else key) in refused:
                continue
            memo = (key, tuple(value) if type(value) is list else value)
            try:
                found = self._seen.get(memo)
            except TypeError:  # an unhashable item (a mapping in a list): no memo
                errors += _load_errors({key: _cli_value(value)}.get, PLACEHOLDER_NAME)
                continue
            if found is None:
                found = self._seen[memo] = tuple(
                    _load_errors({key: _cli_value(value)}.get, PLACEHOLDER_NAME)
                )
            errors += found
        return errors


def whole_load_errors(record: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """The program's `load` of the whole file at once: what `ProgramRules.errors` must equal."""
    return _load_errors(record.get, name)


def _load_errors(values: Callable[[str], Any], stack: str) -> list[tuple[str, str]]:
    """Runs the program's config validation with the store's values filled in."""

    def get(key: str) -> str | None:
        value = _cli_value(values(key))
        if key in _STORE_VALUES and value in (None, ""):
            return _STORE_VALUES[key]
        return value

    def get_provider(key: str) -> str | None:
        return _STORE_DO_TOKEN if key == "token" else _cli_value(values(f"digitalocean:{key}"))

    try:
        stack_config.load(get, stack=stack, get_provider=get_provider, environ={})
    except stack_config.InvalidConfig as exc:
        return [(e.field, e.rule) for e in exc.errors if e.field not in _FROM_STORE_ONLY]
    return []


def _file_key(field_name: str) -> tuple[str, tuple[str | int, ...]]:
    """`tags[1]` -> (`citrus-deploy:tags[1]`, ("config", "citrus-deploy:tags", 1))."""
    base, _, rest = field_name.partition("[")
    full = base if ":" in base else PREFIX + base
    path: tuple[str | int, ...] = ("config", full)
    if not rest:
        return full, path
    index = rest.rstrip("]")
    return f"{full}[{rest}", (*path, int(index)) if index.isdigit() else path


def _credential_problem(key: str, index: int | None, what: str) -> _Problem:
    where: tuple[str | int, ...] = ("config", key) if index is None else ("config", key, index)
    return where, key, f"looks like a credential ({what}, value not shown): {SECRET_RULE}"


def _credential_in(value: Any) -> tuple[int | None, str] | None:
    """(list index or None, what it looks like) when a value, or any string inside it, keys
    of mappings included, looks like a credential."""
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        for text in _strings(item):
            what = credential_in(text)
            if what is not None:
                return index, what
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


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
