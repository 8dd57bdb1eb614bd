"""The project's one exception family: every error a user can cause or fix is a CitrusError."""

from __future__ import annotations


class CitrusError(Exception):
    """Base of every error citrus-deploy raises on purpose."""


class InvalidValue(CitrusError, ValueError):
    """A configuration or request value breaks a rule; names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class DatabaseError(CitrusError):
    """The database could not do what was asked; the message says which and what to do."""


class DatabaseUnreachable(DatabaseError):
    """No connection could be made (server down, wrong host/port, bad credentials)."""


class SchemaMissing(DatabaseError):
    """The tables are not there: the schema has not been applied to this database."""


class RowConflict(DatabaseError):
    """A row with the same key exists but says something else: we will not overwrite it."""


def first_line(exc: BaseException | str) -> str:
    """An error's first line, for a message of one line ("no detail" when it has none)."""
    return (str(exc).strip().splitlines() or ["no detail"])[0]
