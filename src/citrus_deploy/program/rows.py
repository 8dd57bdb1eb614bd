"""Pulumi dynamic provider for the `agents` and `servers` rows.

The provider objects are pickled into Pulumi state and replayed by destroy and refresh, so they
carry no data: the database URL arrives at run time through `configure` (secret stack config
`databaseUrl`, else $DATABASE_URL) and every call opens its own short connection. The agent key
is an input only (secret in state); outputs carry its SHA-256, which lets `diff` see drift without
the key ever becoming an output. After creation `status` belongs to the Engine Hub and the stale
check: nothing here writes it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pulumi
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown

from citrus_deploy.database import connect, named_blocks
from citrus_deploy.errors import DatabaseError, InvalidValue, RowConflict
from citrus_deploy.program import validation

DATABASE_URL_KEY = "databaseUrl"


class _RowProvider(ResourceProvider):
    """Connection handling shared by both row providers."""

    # Set by configure() in the provider process; never present when the object is pickled.
    _conninfo: str | None = None

    def configure(self, req: ConfigureRequest) -> None:
        self._conninfo = req.config.get(DATABASE_URL_KEY) or os.environ.get("DATABASE_URL")

    def _connect(self) -> Any:
        if not self._conninfo:
            raise DatabaseError(
                "no database URL: set it with `pulumi config set --secret databaseUrl ...` "
                "or export DATABASE_URL"
            )
        return connect(self._conninfo)

    def _query(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with self._connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_statements()[name], params)
            return cur.fetchone() if cur.description else None


def _statements() -> dict[str, str]:
    return named_blocks("citrus_deploy.program", "rows.sql")


def _unknown(value: Any) -> bool:
    """A value not known until an earlier resource exists (a preview).

    The provider host deserializes Check and Diff inputs with unknowns kept, so they arrive as
    `pulumi.output.Unknown` objects, not as the wire's sentinel string (which `Unknown` does not
    compare equal to).
    """
    return isinstance(value, Unknown)


def _failures(news: dict[str, Any], rules: dict[str, Any]) -> list[CheckFailure]:
    failures = []
    for prop, rule in rules.items():
        value = news.get(prop)
        if _unknown(value):  # checked when it is known, at the update itself
            continue
        try:
            rule(value, prop)
        except InvalidValue as exc:
            failures.append(CheckFailure(prop, exc.rule))
    return failures


def _differs(old: Any, new: Any) -> bool:
    return _unknown(new) or old != new


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# These two classes must never be renamed, and their pickled path never change. `__provider` in
# every stack's checkpoint is a pickle of `db.provider.AgentRowProvider` /
# `db.provider.ServerRowProvider` by reference (a 50-byte module path and name, no code), and
# destroy and refresh unpickle that stored copy in a provider host started in the project
# directory, where `db/provider.py` re-exports them; an unchanged `up` keeps it too. So new
# stacks store that same path (the `__module__` set below), and every stack has one path only.
# tests/fixtures/provider_pickles.json holds the bytes stored today;
# tests/integration/test_provider_host.py fails if they stop loading.
class AgentRowProvider(_RowProvider):
    """`agents(id, key, status, name)`; the resource id is the agent id."""

    RULES = {
        "agentId": validation.agent_id,
        "key": validation.agent_key,
        "name": validation.required_text,
    }

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, _failures(news, self.RULES))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changes = [p for p in ("agentId", "name") if _differs(olds.get(p), news.get(p))]
        key = news.get("key")
        if _unknown(key) or olds.get("keySha256") != _key_digest(str(key)):
            changes.append("key")
        return DiffResult(
            changes=bool(changes),
            replaces=[c for c in changes if c == "agentId"],
            delete_before_replace=False,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        params = {"id": props["agentId"], "key": props["key"], "name": props["name"]}
        with self._connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_statements()["insert_agent"], params)
            cur.execute(_statements()["select_agent"], params)
            row = cur.fetchone()
        assert row is not None  # inserted or already there, in this transaction
        if row["key"] != params["key"] or row["name"] != params["name"]:
            raise RowConflict(
                f"agents row {params['id']} already exists with a different key or name; "
                "refusing to overwrite it. Delete that row or use a new agent id."
            )
        return CreateResult(row["id"], self._outs(row))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        row = self._query("select_agent", {"id": id_})
        if row is None:
            return ReadResult("", {})  # gone: the engine drops it from state
        return ReadResult(row["id"], self._outs(row))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        row = self._query("update_agent", {"id": id_, "key": news["key"], "name": news["name"]})
        if row is None:
            raise DatabaseError(
                f"agents row {id_} no longer exists; run `pulumi refresh` to recreate it"
            )
        return UpdateResult(self._outs(row))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        try:
            self._query("delete_agent", {"id": id_})
        except DatabaseError as exc:
            if isinstance(exc.__cause__, pg_errors.ForeignKeyViolation):
                raise RowConflict(
                    f"agents row {id_} is still used by a servers row; delete the server first"
                ) from exc
            raise

    @staticmethod
    def _outs(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "agentId": row["id"],
            "name": row["name"],
            "status": row["status"],
            "keySha256": _key_digest(row["key"]),
        }


class ServerRowProvider(_RowProvider):
    """`servers(name, digital_ocean_id, region, size, status, agent_id)`; id is the row's id."""

    RULES = {
        "name": validation.server_name,
        "dropletId": validation.required_text,
        "region": validation.region,
        "size": validation.size,
        "agentId": validation.agent_id,
    }
    _COLUMNS = {
        "name": "name",
        "dropletId": "digital_ocean_id",
        "region": "region",
        "size": "size",
        "agentId": "agent_id",
    }

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, _failures(news, self.RULES))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changes = [p for p in self._COLUMNS if _differs(olds.get(p), news.get(p))]
        return DiffResult(changes=bool(changes), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        params = self._params(props)
        try:
            with self._connect() as conn, conn.cursor(row_factory=dict_row) as cur:
                cur.execute(_statements()["insert_server"], params)
                cur.execute(_statements()["select_server_by_name"], params)
                row = cur.fetchone()
        except DatabaseError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise RowConflict(
                    f"droplet {params['digital_ocean_id']} already has a servers row under "
                    "another name; destroy that stack or fix the row"
                ) from exc
            raise
        assert row is not None
        if row["name"] != params["name"]:
            # The same name in another case: one hostname, so one row (servers_name_lower_key),
            # even though Pulumi keeps stacks `WEB-UP` and `web-up` apart.
            raise RowConflict(
                f"a server named {row['name']!r} already exists (droplet "
                f"{row['digital_ocean_id']}); server names are hostnames, unique regardless of "
                f"case, so {params['name']!r} is taken: choose another serverName or destroy "
                "that server"
            )
        mismatched = [c for c in self._COLUMNS.values() if row[c] != params[c]]
        if mismatched:
            raise RowConflict(
                f"a servers row named {params['name']!r} already exists with different "
                f"{', '.join(mismatched)}; choose another serverName or destroy that server"
            )
        return CreateResult(row["id"], self._outs(row))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        row = self._query("select_server", {"id": id_})
        if row is None:
            return ReadResult("", {})
        return ReadResult(row["id"], self._outs(row))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        row = self._query("update_server", {"id": id_, **self._params(news)})
        if row is None:
            raise DatabaseError(
                f"servers row {id_} no longer exists; run `pulumi refresh` to recreate it"
            )
        return UpdateResult(self._outs(row))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self._query("delete_server", {"id": id_})

    def _params(self, props: dict[str, Any]) -> dict[str, Any]:
        return {column: props[prop] for prop, column in self._COLUMNS.items()}

    def _outs(self, row: dict[str, Any]) -> dict[str, Any]:
        outs = {prop: row[column] for prop, column in self._COLUMNS.items()}
        return {**outs, "serverId": row["id"], "status": row["status"]}


class AgentRow(Resource, module="citrus", name="AgentRow"):
    """The agent's row; `key` must be a secret Output."""

    agentId: pulumi.Output[str]
    name: pulumi.Output[str]
    status: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        agent_id: pulumi.Input[str],
        key: pulumi.Input[str],
        agent_name: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "agentId": agent_id,
            "key": pulumi.Output.secret(key),
            "name": agent_name,
            "status": None,
            "keySha256": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["key"])
        )
        super().__init__(AgentRowProvider(), name, props, opts)


class ServerRow(Resource, module="citrus", name="ServerRow"):
    """The server's row, written once the droplet exists."""

    serverId: pulumi.Output[str]
    status: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        server_name: pulumi.Input[str],
        droplet_id: pulumi.Input[str],
        region: pulumi.Input[str],
        size: pulumi.Input[str],
        agent_id: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "name": server_name,
            "dropletId": droplet_id,
            "region": region,
            "size": size,
            "agentId": agent_id,
            "serverId": None,
            "status": None,
        }
        super().__init__(ServerRowProvider(), name, props, opts)


# The pickled path (see above): the program runs, and the provider host starts, in the project
# directory, where `db.provider` is importable (citrus_deploy/program/project/db).
AgentRowProvider.__module__ = ServerRowProvider.__module__ = "db.provider"
