"""The store's named SQL blocks: one name space over every file in store/sql/, each statement
defined once."""

from __future__ import annotations

import functools
from importlib.resources import files

from citrus_deploy.database import named_blocks


@functools.cache
def load() -> dict[str, str]:
    """Every `-- name: x` block of store/sql/*.sql; a name given twice is an error."""
    found: dict[str, str] = {}
    folder = files("citrus_deploy.store").joinpath("sql")
    for entry in sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql")):
        for name, sql in named_blocks("citrus_deploy.store", f"sql/{entry}").items():
            if name in found:
                raise RuntimeError(f"SQL block {name!r} is defined twice (store/sql/{entry})")
            found[name] = sql
    return found
