"""A real Git repository with a fleet folder, for every GitOps test.

    def test_x(fleet_repo):
        fleet_repo.write("web-1", size="s-1vcpu-1gb", tags=["web"])   # fleet/Pulumi.web-1.yaml
        sha = fleet_repo.commit("add web-1")
        fleet_repo.rename("web-1", "web-2"); fleet_repo.remove("web-3"); fleet_repo.commit("...")

Keys without a namespace get `citrus-deploy:`; write `gitops:adopt=True` as
`fleet_repo.write("web-1", **{"gitops:adopt": True})`. `write_text` writes any file verbatim.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

GIT_IDENTITY = (
    "-c",
    "user.name=GitOps Test",
    "-c",
    "user.email=gitops-test@example.invalid",
    "-c",
    "commit.gpgsign=false",
)


@dataclass
class FleetRepo:
    """A Git repository at `root` with the fleet folder `root/fleet`."""

    root: Path
    fleet: Path

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *GIT_IDENTITY, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def path(self, name: str) -> Path:
        return self.fleet / f"Pulumi.{name}.yaml"

    def write(self, name: str, **values: Any) -> Path:
        """fleet/Pulumi.<name>.yaml with `values` under `config:` (namespaced as a user writes)."""
        config = {key if ":" in key else f"citrus-deploy:{key}": v for key, v in values.items()}
        return self.write_text(self.path(name).name, yaml.safe_dump({"config": config}))

    def write_text(self, filename: str, text: str) -> Path:
        path = self.fleet / filename
        path.write_text(text)
        return path

    def remove(self, name: str) -> None:
        self.path(name).unlink()

    def rename(self, old: str, new: str) -> None:
        self.path(old).rename(self.path(new))

    def commit(self, message: str = "change the fleet") -> str:
        """Commits everything in the repository; returns the new HEAD sha."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    """An empty repository (one commit with a README in the fleet folder)."""
    root = tmp_path / "repo"
    fleet = root / "fleet"
    fleet.mkdir(parents=True)
    repo = FleetRepo(root, fleet)
    repo.git("init", "--quiet", "--initial-branch=main")
    (fleet / "README.md").write_text("One file per server.\n")
    repo.commit("start the fleet")
    return repo
