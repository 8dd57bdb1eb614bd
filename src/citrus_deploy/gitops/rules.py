"""The program's rules for a stack file's config: which keys a fleet file may hold (the
program's declared config, the provider's, gitops'), no secret in any of them, and every value
checked by the program's own validation, with the store's values filled in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from citrus_deploy.errors import InvalidValue
from citrus_deploy.gitops.credentials import credential_in
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
Problem = tuple[tuple[str | int, ...] | None, str | None, str]

PLACEHOLDER_NAME = "placeholder-server"

SECRET_RULE = "secrets come from the pipeline's secret store, never from a fleet file"  # noqa: S105


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


def check_document(
    document: Any, name: str, problems: list[Problem], rules: ProgramRules
) -> tuple[dict[str, Any], bool]:
    """(record config, adopt) of a stack file's document; what breaks a rule goes to `problems`."""
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


def _credential_problem(key: str, index: int | None, what: str) -> Problem:
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
