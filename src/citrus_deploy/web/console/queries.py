"""The console's own statements (console.sql, beside this module): what it reads and records
besides the store's readers."""

from __future__ import annotations

import functools

from citrus_deploy.database import named_blocks


@functools.cache
def sql() -> dict[str, str]:
    """console.sql's `-- name: x` blocks, by name, read once per process."""
    return named_blocks("citrus_deploy.web.console", "console.sql")
