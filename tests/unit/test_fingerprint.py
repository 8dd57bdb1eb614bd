"""The program's hash covers what `pulumi up` runs, and only that: GitOps marks every server
changed when it moves, so a change to the service, GitOps or their SQL must not move it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from citrus_deploy.engine.fingerprint import PACKAGE, program_files, program_hash
from citrus_deploy.program import PROJECT_DIR


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the installed package, to edit."""
    copy = tmp_path / "citrus_deploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n-- edited\n")


@pytest.mark.parametrize(
    "edited",
    [
        "store/sql/metrics.sql",
        "store/migrations/0006_metrics.sql",
        "web/metrics.py",
        "gitops/plan.py",
    ],
)
def test_a_change_outside_the_program_marks_no_server_changed(package: Path, edited: str) -> None:
    before = program_hash(package)

    _edit(package / edited)

    assert program_hash(package) == before


@pytest.mark.parametrize(
    "edited",
    [
        "program/templates/user_data.sh.j2",
        "program/rows.sql",
        "program/component.py",
        "program/project/Pulumi.yaml",
        "errors.py",
        "database.py",
    ],
)
def test_a_change_to_what_pulumi_up_runs_marks_every_server_changed(
    package: Path, edited: str
) -> None:
    before = program_hash(package)

    _edit(package / edited)

    assert program_hash(package) != before


def test_the_hash_covers_exactly_the_modules_a_run_of_the_program_loads() -> None:
    """What the language host imports running the program, and the provider host unpickling the
    row providers (db.provider from the project directory): those files and no other module."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import citrus_deploy.program.main, db.provider;"
        "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values())"
        " if getattr(m, '__file__', None) and 'citrus_deploy' in m.__file__})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(PROJECT_DIR)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {Path(f).resolve() for f in json.loads(done.stdout)}
    hashed = {p.resolve() for p in program_files() if p.suffix == ".py"}
    run_not_imported = {(PROJECT_DIR / "__main__.py").resolve()}  # the language host runs it

    assert loaded == hashed - run_not_imported
