"""Field rules for everything that reaches DigitalOcean, the database or the root boot script.

Each check returns the value it accepts (unchanged) or raises InvalidValue naming the field and
the rule. The rules are deliberately narrower than what the remote APIs accept: every value here
ends up in a root shell script, so a value is allowed only if it is plainly harmless there.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from citrus_deploy.errors import InvalidValue

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
SERVER_NAME_MAX = 63

_REGION = re.compile(r"[a-z]{3}[1-9]")
_SLUG = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")
# The same rules as JSON Schema patterns, for the service's OpenAPI (anchored: a pattern there
# matches anywhere otherwise).
REGION_PATTERN = f"^{_REGION.pattern}$"
SIZE_PATTERN = f"^{_SLUG.pattern}$"
SIZE_MAX = 64
_IMAGE = re.compile(r"[a-z0-9]+(?:[-._][a-z0-9]+)*|[1-9][0-9]{0,18}")
_AGENT_KEY = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_:-]{1,255}")
_SSH_KEY = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){15}|[1-9][0-9]{0,18}")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_GIT_REF = re.compile(r"[A-Za-z0-9._/-]{1,255}")
# URL characters allowed into the boot script: RFC 3986 unreserved, sub-delims, ':', '/', '?',
# '@', '%', '[' and ']'. No whitespace, no controls, no '#', no backslash, no quotes other than "'".
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:/?@%\[\]]+")
URL_MAX = 2048
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def server_name(value: object, field: str = "serverName") -> str:
    """A DigitalOcean droplet name that is also a valid hostname.

    Kept as given; unique regardless of case, as hostnames are, which only the database can
    hold (store/migrations, servers_name_lower_key and deployments_one_active).
    """
    text = required_text(value, field)
    if len(text) > SERVER_NAME_MAX:
        raise InvalidValue(field, f"at most {SERVER_NAME_MAX} characters (got {len(text)})")
    if not _HOSTNAME.fullmatch(text):
        raise InvalidValue(
            field,
            "must be a hostname: letters, digits, '-' and '.', each dot-separated part "
            "starting and ending with a letter or digit",
        )
    return text


def agent_name(value: object, field: str = "agentName") -> str:
    """The agents row's name: agent-<server name> or the old platform's agent-<unix millis>."""
    text = required_text(value, field)
    if len(text) > SERVER_NAME_MAX + len("agent-") or not _HOSTNAME.fullmatch(text):
        raise InvalidValue(
            field, f"must be a hostname-like name of at most {SERVER_NAME_MAX + 6} characters"
        )
    return text


def region(value: object, field: str = "region") -> str:
    text = required_text(value, field)
    if not _REGION.fullmatch(text):
        raise InvalidValue(field, "must be a DigitalOcean region slug such as 'sfo3'")
    return text


def size(value: object, field: str = "size") -> str:
    text = required_text(value, field)
    if len(text) > SIZE_MAX or not _SLUG.fullmatch(text):
        raise InvalidValue(field, "must be a DigitalOcean size slug such as 's-1vcpu-512mb-10gb'")
    return text


def image(value: object, field: str = "image") -> str:
    text = required_text(value, field)
    if len(text) > 64 or not _IMAGE.fullmatch(text):
        raise InvalidValue(
            field, "must be a DigitalOcean image slug such as 'debian-12-x64' or a numeric id"
        )
    return text


def engine_ws_url(value: object, field: str = "engineWsUrl") -> str:
    """The hub's WebSocket URL: ws:// or wss://, a host, no credentials, no fragment."""
    text = _url(value, field, schemes=("ws", "wss"))
    return text


def repo_url(value: object, field: str = "agentRepoUrl") -> str:
    """The agent's Git repository: https (plain http only on the loopback, for tests)."""
    text = _url(value, field, schemes=("https", "http"))
    parts = urlsplit(text)
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise InvalidValue(field, "must use https (the token travels with the request)")
    if parts.query:
        raise InvalidValue(field, "must not have a query string")
    if len(parts.path) < 2:
        raise InvalidValue(field, "must name a repository path, e.g. /owner/repo.git")
    return text


def boot_report_url(value: object, field: str = "bootReportUrl") -> str:
    """The service's base URL the boot script reports to: https, or plain http to a loopback or
    private address (a VPC, or tests), where the log tail it sends crosses no public network."""
    text = _url(value, field, schemes=("https", "http"))
    parts = urlsplit(text)
    if parts.scheme == "http" and not _is_private_host(parts.hostname or ""):
        raise InvalidValue(
            field,
            "must use https; plain http only to a loopback or private address (10/8, "
            "172.16/12, 192.168/16, fc00::/7, localhost)",
        )
    if parts.query:
        raise InvalidValue(field, "must not have a query string")
    return text


def _is_private_host(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: whatever it resolves to, it could be public
    return address.is_loopback or address.is_private


def git_ref(value: object, field: str = "agentRepoRef") -> str:
    """A branch, tag or commit: git's ref-name rules, narrowed to shell-harmless characters."""
    text = required_text(value, field)
    if not _GIT_REF.fullmatch(text):
        raise InvalidValue(field, "may contain only letters, digits, '.', '_', '-' and '/'")
    bad = (
        text.startswith(("-", "/", "."))
        or text.endswith(("/", ".", ".lock"))
        or ".." in text
        or "//" in text
        or "/." in text
    )
    if bad:
        raise InvalidValue(
            field,
            "must be a valid git ref: no leading '-', '/' or '.', no '..' or '//', "
            "no trailing '/', '.' or '.lock'",
        )
    return text


def github_token(value: object, field: str = "githubToken") -> str:
    text = required_text(value, field)
    if not _TOKEN.fullmatch(text):
        # The value itself is never echoed: it is a secret.
        raise InvalidValue(
            field, "must be 1-255 characters of letters, digits, '_', '.' and '-' (value hidden)"
        )
    return text


def agent_id(value: object, field: str = "agentId") -> str:
    text = required_text(value, field)
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise InvalidValue(field, "must be a UUID") from None
    if str(parsed) != text:
        raise InvalidValue(field, "must be a UUID in lowercase canonical form")
    return text


def agent_key(value: object, field: str = "agentKey") -> str:
    text = required_text(value, field)
    if not _AGENT_KEY.fullmatch(text):
        raise InvalidValue(field, "must be 64 lowercase hex characters (32 bytes; value hidden)")
    return text


def tags(value: object, field: str = "tags") -> list[str]:
    items = _list(value, field)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not _TAG.fullmatch(item):
            raise InvalidValue(f"{field}[{i}]", "must be 1-255 letters, digits, '_', ':' or '-'")
    if len(set(items)) != len(items):
        raise InvalidValue(field, "must not repeat a tag")
    return items


def ssh_keys(value: object, field: str = "sshKeys") -> list[str]:
    items = _list(value, field)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not _SSH_KEY.fullmatch(item):
            raise InvalidValue(
                f"{field}[{i}]",
                "must be an SSH key id or an MD5 fingerprint such as 'aa:bb:...' (16 pairs)",
            )
    return items


def vpc_uuid(value: object, field: str = "vpcUuid") -> str:
    return agent_id(value, field)


def boolean(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidValue(field, "must be true or false")


def required_text(value: object, field: str) -> str:
    """Any non-empty string."""
    if not isinstance(value, str) or value == "":
        raise InvalidValue(field, "is required and must be a non-empty string")
    return value


def _list(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Iterable) or isinstance(value, (str, bytes, dict)):
        raise InvalidValue(field, "must be a list")
    return list(value)


def _url(value: object, field: str, *, schemes: tuple[str, ...]) -> str:
    text = required_text(value, field)
    if len(text) > URL_MAX:
        raise InvalidValue(field, f"at most {URL_MAX} characters")
    if not _URL_CHARS.fullmatch(text):
        raise InvalidValue(
            field,
            "may contain only URL characters: no spaces, quotes other than ', backslashes, "
            "'#' or control characters",
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidValue(field, f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise InvalidValue(field, f"must start with {allowed}")
    if not parts.hostname:
        raise InvalidValue(field, "must name a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue(
            field, "must not carry credentials (user@ or user:password@); use the secret settings"
        )
    if port == 0:
        raise InvalidValue(field, "port must be 1-65535")
    return text
