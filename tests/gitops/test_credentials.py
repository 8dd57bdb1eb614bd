"""What a credential looks like: every prefix of the table, URLs with a password or a secret
in their query; and plain values that must pass."""

from __future__ import annotations

import re

import pytest

from citrus_deploy.gitops.credentials import TOKEN_PREFIXES, credential_in, redact


def sample(rest: str) -> str:
    """A string that fits `rest`, the table's pattern after a prefix (`[A-Z0-9]{16}`, ...)."""
    if rest.endswith("PRIVATE KEY-----"):
        return "OPENSSH PRIVATE KEY-----"
    found = re.fullmatch(r"\[([^]]+)\](?:\{(\d+),?\}|\+)", rest)
    assert found, rest
    chars, count = found.group(1), int(found.group(2) or 40)
    alphabet = "0a" if "a-f" in chars else "a1" if "a-z" in chars else "A1"
    return (alphabet * count)[:count]


TOKENS = [(what, prefix, rest) for what, prefixes, rest in TOKEN_PREFIXES for prefix in prefixes]


@pytest.mark.parametrize(("what", "prefix", "rest"), TOKENS, ids=[t[1] for t in TOKENS])
def test_every_prefix_of_the_table_is_recognised_and_redacted(
    what: str, prefix: str, rest: str
) -> None:
    token = prefix + sample(rest)
    assert re.fullmatch(rest, sample(rest)), "the sample must fit the pattern"
    assert credential_in(f"before {token} after") == what
    assert redact(f"before {token} after") == "before [redacted] after"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("https://x:pw@github.com/o/r.git", "a URL with a password"),
        ("postgresql://u:pw@db/x", "a URL with a password"),
        ("u:pw@host", "a URL with a password"),
        ("https://:tok@host/", "a URL with a password"),
        ("https://h/x?token=abc", "a URL with a secret in its query"),
        ("https://h/x?a=1&ACCESS_TOKEN=abc", "a URL with a secret in its query"),
        ("https://h/x?password=abc", "a URL with a secret in its query"),
        ("https://h/cb#access_token=abc", "a URL with a secret in its query"),
    ],
)
def test_urls_with_a_password_or_a_secret_query(text: str, what: str) -> None:
    assert credential_in(text) == what
    assert "pw" not in redact(text)
    assert "abc" not in redact(text)
    assert "tok@" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "sfo3",
        "s-1vcpu-1gb",
        "wss://engine.citrushost.io",
        "wss://hub.example/ws?region=sfo3",
        "git@github.com:org/repo.git",
        "ssh://git@host:22/org/repo",
        "https://github.com/org/repo.git",
        "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa",
        "v1.4.2",
        "team-3",
    ],
)
def test_plain_values_pass(text: str) -> None:
    assert credential_in(text) is None
    assert redact(text) == text
