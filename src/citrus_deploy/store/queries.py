"""The store's named SQL blocks (sql/queries.sql) and its schema."""

from __future__ import annotations

import functools
from importlib.resources import files

from citrus_deploy.database import named_blocks


@functools.cache
def load(filename: str = "queries.sql") -> dict[str, str]:
    return named_blocks("citrus_deploy.store", f"sql/{filename}")


def schema() -> str:
    return files("citrus_deploy.store").joinpath("sql/schema.sql").read_text()
