"""PostgreSQL for every part: named SQL blocks from .sql files, connections whose driver errors
become the project's own, and a connection target safe to show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from citrus_deploy.errors import (
    DatabaseError,
    DatabaseUnreachable,
    InvalidValue,
    SchemaMissing,
    first_line,
)

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def named_blocks(package: str, filename: str) -> dict[str, str]:
    """Splits a package's .sql file into its `-- name: x` blocks."""
    text = files(package).joinpath(filename).read_text()
    pieces = _NAME.split(text)
    return {name: body.strip() for name, body in zip(pieces[1::2], pieces[2::2], strict=True)}


def describe(conninfo: str) -> str:
    """The connection target without credentials, safe for messages and logs."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host") or "local socket"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or '(default db)'}"


def check_conninfo(conninfo: str, field: str) -> None:
    """Raises InvalidValue if the URL/conninfo cannot be parsed, without echoing it."""
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise InvalidValue(
            field, "must be a PostgreSQL URL (postgresql://user@host/db) or conninfo (value hidden)"
        ) from None


@contextmanager
def connect(conninfo: str, *, connect_timeout: int = 10) -> Iterator[psycopg.Connection]:
    """One transaction on a fresh connection; driver errors become DatabaseError subclasses.

    Fresh connections suit the dynamic provider: each call is a short, separate process step
    and nothing may be held in the pickled provider.
    """
    where = describe(conninfo)
    try:
        conn = psycopg.connect(conninfo, connect_timeout=connect_timeout, autocommit=False)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL at {where}: {first_line(exc)}. "
            "Check that the server is running and that databaseUrl (or DATABASE_URL) is right."
        ) from exc
    try:
        with conn:
            yield conn
    except pg_errors.UndefinedTable as exc:
        raise SchemaMissing(
            f"the citrus tables are missing in {where} ({first_line(exc)}). "
            "Apply the schema first: DATABASE_URL=... citrus-deploy db migrate"
        ) from exc
    except psycopg.IntegrityError as exc:
        # Callers that expect a conflict look at __cause__ (UniqueViolation, ForeignKeyViolation).
        raise DatabaseError(
            f"{where} refused the row: constraint {exc.diag.constraint_name} failed"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"lost the connection to PostgreSQL at {where}: {first_line(exc)}. "
            "Retry when it is back."
        ) from exc
    finally:
        conn.close()
