"""What the apply, drift and status commands share: the service's database, the repository
identity of the checkout, the server names of the folder, and a JSON result to write."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from citrus_deploy.errors import CitrusError
from citrus_deploy.gitops import gitrepo
from citrus_deploy.gitops.fleet import read_fleet


def repository_of(directory: Path, option: str | None) -> str:
    """The repository identity of the checkout holding `directory` (see gitops.gitrepo)."""
    return gitrepo.repository_identity(option, gitrepo.toplevel(require_folder(directory)))


def fleet_names(directory: Path) -> list[str]:
    """The server names of the folder's stack files."""
    return sorted(read_fleet(require_folder(directory)).files)


def require_folder(directory: Path) -> Path:
    """`directory`, or a CitrusError when it is no folder."""
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
