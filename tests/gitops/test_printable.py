"""Names and keys from a repository, escaped for a terminal or a CI log."""

from __future__ import annotations

import os

import pytest

from citrus_deploy.gitops.printable import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("fleet/Pulumi.web-1.yaml", "fleet/Pulumi.web-1.yaml"),
        ("a\nb", "a\\nb"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x00\x7f", "\\x00\\x7f"),
        ("caf\u00e9", "caf\\xe9"),
        ("\u202e", "\\u202e"),
        ("\U0001f600", "\\U0001f600"),
        (os.fsdecode(b"\xff"), "\\xff"),
    ],
)
def test_everything_but_printable_ascii_is_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_escaping_twice_changes_nothing() -> None:
    once = printable("x\n\x1b\u202e")
    assert printable(once) == once
