"""The package's shape, as STYLE.md and the layer contract (pyproject.toml, lint-imports) want
it: modules one can read in one sitting, and no import tucked inside a function to dodge a
cycle (an import there is fine only with a comment on its line saying why)."""

from __future__ import annotations

import ast
import subprocess

from tests.paths import REPO

MAX_LINES = 500
PACKAGE = REPO / "src" / "citrus_deploy"


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name]


def test_no_file_outside_the_tests_is_over_500_lines() -> None:
    long = []
    for name in tracked_files():
        path = REPO / name
        if name.startswith("tests/") or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # an image
            continue
        count = data.count(b"\n")
        if count > MAX_LINES:
            long.append(f"{name}: {count} lines")
    assert long == []


def _inner_imports(path: str) -> list[str]:
    source = (REPO / path).read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                "citrus_deploy"
            ):
                line = lines[inner.lineno - 1]
                if "#" not in line:
                    found.append(f"{path}:{inner.lineno}: {line.strip()}")
            elif isinstance(inner, ast.Import) and any(
                alias.name.startswith("citrus_deploy") for alias in inner.names
            ):
                found.append(f"{path}:{inner.lineno}")
    return found


def test_no_first_party_import_inside_a_function_without_a_reason() -> None:
    found = []
    for name in tracked_files():
        if name.startswith("src/") and name.endswith(".py"):
            found += _inner_imports(name)
    assert found == []
