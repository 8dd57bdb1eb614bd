"""What a credential looks like, so that a fleet file holding one is refused without showing it.

A fleet file is public to everyone who can read the repository, and its values end up in plans,
pull request comments and logs; secrets come from the pipeline's secret store instead. Tokens
are recognised by the prefixes their issuers give them (TOKEN_PREFIXES), URLs by a password in
their user part or a secret-named query parameter. `redact` is the last guard on any message.
"""

from __future__ import annotations

import functools
import re

# What each well-known token prefix is, and what follows the prefix. The DigitalOcean and
# GitHub ones keep the one name their errors always had.
TOKEN_PREFIXES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("a DigitalOcean or GitHub token", ("dop_v1_", "doo_v1_", "dor_v1_"), "[A-Za-z0-9]+"),
    ("a DigitalOcean or GitHub token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), "[A-Za-z0-9]+"),
    ("a DigitalOcean or GitHub token", ("github_pat_",), "[A-Za-z0-9_]+"),
    (
        "a GitLab token",
        ("glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-", "gloas-", "glcbt-", "glimt-"),
        "[A-Za-z0-9_-]{8,}",
    ),
    ("a GitLab token", ("glagent-",), "[A-Za-z0-9_-]{8,}"),
    ("a Slack token", ("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xapp-"), "[A-Za-z0-9-]{8,}"),
    ("an AWS access key", ("AKIA", "ASIA"), "[A-Z0-9]{16}"),
    ("a Pulumi access token", ("pul-",), "[0-9a-f]{40}"),
    ("a Stripe key", ("sk_live_", "rk_live_"), "[A-Za-z0-9]{16,}"),
    ("a Google API key", ("AIza",), "[A-Za-z0-9_-]{35}"),
    ("an npm token", ("npm_",), "[A-Za-z0-9]{36}"),
    ("a PyPI token", ("pypi-",), "[A-Za-z0-9_-]{16,}"),
    ("a private key", ("-----BEGIN ",), "[A-Z0-9 ]*PRIVATE KEY-----"),
)

URL_PASSWORD = "a URL with a password"  # noqa: S105 - what an error calls it
URL_QUERY_SECRET = "a URL with a secret in its query"  # noqa: S105 - likewise

# Query (or fragment) parameters that carry a secret: ?token=..., &access_token=..., ...
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&#;](?:access_token|auth_token|id_token|refresh_token|private_token|token|password|"
    r"passwd|pwd|secret|client_secret|api_key|apikey|api-key|key|auth|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-goog-signature|x-goog-credential)=)[^&#\s]+",
    re.IGNORECASE,
)
# `user:password@host`, with or without a scheme (https://, postgresql://, git+ssh://), the
# password non-empty; `git@github.com:org/repo` has no password and passes.
_USERINFO_PASSWORD = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.-]*://|(?<![^\s\"'(<,;=]))[^\s/?#@:]*:[^\s/?#@]+@(?=[^\s/?#@])"
)


def _prefix_pattern(prefixes: tuple[str, ...], rest: str) -> str:
    return "(?:" + "|".join(re.escape(p) for p in prefixes) + ")" + rest


# One search for every prefix; the lookahead on their first characters keeps a value with none
# of them (nearly every value of a fleet) at the speed of a single-pattern search.
_FIRST = "".join(sorted({p[0] for _, prefixes, _ in TOKEN_PREFIXES for p in prefixes}))
_TOKENS = re.compile(
    f"(?=[{re.escape(_FIRST)}])(?:"
    + "|".join(_prefix_pattern(prefixes, rest) for _, prefixes, rest in TOKEN_PREFIXES)
    + ")"
)


@functools.cache
def _each() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((what, re.compile(_prefix_pattern(p, rest))) for what, p, rest in TOKEN_PREFIXES)


def credential_in(text: str) -> str | None:
    """What `text` looks like ("a GitLab token") when it holds a credential, else None."""
    if _TOKENS.search(text):
        return next(what for what, pattern in _each() if pattern.search(text))
    if "=" in text and _QUERY_SECRET.search(text):
        return URL_QUERY_SECRET
    if "@" in text and _USERINFO_PASSWORD.search(text):
        return URL_PASSWORD
    return None


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `[redacted]`."""
    text = _TOKENS.sub("[redacted]", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\g<name>[redacted]", text)
    if "@" in text:
        text = _USERINFO_PASSWORD.sub("[redacted]@", text)
    return text
