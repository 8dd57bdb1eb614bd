"""What the apply, drift and status commands share: the service's database, the repository
identity of the checkout, the server names of the folder, and a JSON result to write."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from citrus_deploy.errors import CitrusError


def repository_of(directory: Path, option: str | None) -> str:
    """The repository identity of the checkout holding `directory` (see gitops.gitrepo)."""
    from citrus_deploy.gitops import gitrepo

    return gitrepo.repository_identity(option, gitrepo.toplevel(_folder(directory)))


def fleet_names(directory: Path) -> list[str]:
    """The server names of the folder's stack files."""
    from citrus_deploy.gitops.fleet import read_fleet

    return sorted(read_fleet(_folder(directory)).files)


def _folder(directory: Path) -> Path:
    if not directory.is_dir():
        raise CitrusError(f"{directory}: no such folder")
    return directory


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise CitrusError("DATABASE_URL is not set: export it (postgresql://user@host/db)")
    return url


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        path.write_text(text)
