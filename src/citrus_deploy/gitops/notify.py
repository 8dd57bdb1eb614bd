"""Tells a webhook how an apply or a drift check ended: a Slack-compatible JSON body (`text`, plus
the details under `citrus`), signed with HMAC-SHA256 so the receiver knows it came from us.

Signing, as Slack's and GitHub's webhooks do it: the header X-Citrus-Timestamp carries the Unix
time in seconds, X-Citrus-Signature carries `v1=` and the hex HMAC-SHA256, keyed with the shared
secret, of `v1:{timestamp}:{body}` (the raw body bytes). A receiver recomputes it, compares in
constant time, and refuses a timestamp more than five minutes from its clock (a replay); verify()
does exactly that. docs/gitops-pipeline.md: "Notifications".

Notifying is best effort: a missing secret, a bad URL, a timeout or an HTTP error is reported on
stderr (naming the webhook's host, never its URL, which may itself be a credential, nor the
secret) and never changes the command's exit code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

from citrus_deploy.errors import CitrusError

URL_ENV = "CITRUS_NOTIFY_URL"
SECRET_ENV = "CITRUS_NOTIFY_SECRET"  # noqa: S105 (the variable's name)
TIMEOUT_ENV = "CITRUS_NOTIFY_TIMEOUT"
TIMEOUT_SECONDS = 5.0
MAX_TIMEOUT = 30.0  # an apply waits on its notification at most this long
SIGNATURE_HEADER = "X-Citrus-Signature"
TIMESTAMP_HEADER = "X-Citrus-Timestamp"
VERSION = "v1"
TOLERANCE_SECONDS = 300
MAX_NAMES = 20  # servers named in `text`; every one is under `citrus`


class NotifyError(CitrusError):
    """The webhook is configured wrongly (the field and the rule) or did not take the message."""


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: bytes = field(repr=False)
    timeout: float = TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise NotifyError(f"{URL_ENV}: must be an http(s):// URL with a host")

    @property
    def host(self) -> str:
        """What a message about this webhook may say of it (its URL may hold a token)."""
        return urlsplit(self.url).hostname or "?"


def from_env(environ: Mapping[str, str] = os.environ) -> Webhook | None:
    """The webhook the environment names, or None when CITRUS_NOTIFY_URL is unset."""
    url = environ.get(URL_ENV, "").strip()
    if not url:
        return None
    secret = environ.get(SECRET_ENV, "")
    if len(secret) < 16:
        raise NotifyError(f"{SECRET_ENV}: must be set, at least 16 characters, when {URL_ENV} is")
    raw = environ.get(TIMEOUT_ENV, "").strip()
    try:
        timeout = float(raw) if raw else TIMEOUT_SECONDS
    except ValueError:
        timeout = math.nan
    if not (0 < timeout <= MAX_TIMEOUT):
        raise NotifyError(f"{TIMEOUT_ENV}: must be seconds in (0, {MAX_TIMEOUT:g}], not {raw!r}")
    return Webhook(url, secret.encode(), timeout)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new address to send the signed body to."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Citrus-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{VERSION}:{timestamp}:".encode() + body, hashlib.sha256)
    return f"{VERSION}={mac.hexdigest()}"


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def send(webhook: Webhook, message: Mapping[str, Any], *, now: float | None = None) -> None:
    """POSTs the signed message; raises NotifyError (never naming the URL or the secret)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    timestamp = str(int(time.time() if now is None else now))
    request = urllib.request.Request(  # noqa: S310 (Webhook allows http(s) only)
        webhook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "citrus-deploy-gitops",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(webhook.secret, timestamp, body),
        },
    )
    try:
        with _OPENER.open(request, timeout=webhook.timeout) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{webhook.host} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            raise NotifyError(f"{webhook.host} did not answer in {webhook.timeout:g}s") from None
        raise NotifyError(f"cannot reach {webhook.host}: {type(reason).__name__}") from None


def notify(
    message: Mapping[str, Any],
    *,
    environ: Mapping[str, str] = os.environ,
    err: TextIO | None = None,
) -> bool:
    """Sends `message` to the configured webhook; True when it was taken. Any failure is
    reported on stderr and returns False: a notification never fails the command."""
    out = err or sys.stderr
    try:
        webhook = from_env(environ)
        if webhook is None:
            return False
        send(webhook, message)
    except NotifyError as exc:
        print(f"notify: not sent: {exc}", file=out)
        return False
    return True


# --- the messages -----------------------------------------------------------------------------


class ServerResult(Protocol):
    """One row of an apply's table (gitops.rollout.Result)."""

    @property
    def name(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def wave(self) -> int | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def error(self) -> str | None: ...


class DriftResult(Protocol):
    """One server's drift check (gitops.drift.Drift)."""

    @property
    def name(self) -> str: ...
    @property
    def changes(self) -> list[str]: ...
    @property
    def error(self) -> str | None: ...


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def apply_message(
    *,
    apply_id: int,
    repository: str,
    commit: str,
    outcome: str,
    stopped: str | None,
    results: Iterable[ServerResult],
) -> dict[str, Any]:
    rows = list(results)
    by_outcome: dict[str, list[str]] = {}
    for row in rows:
        by_outcome.setdefault(row.outcome, []).append(row.name)
    counts = ", ".join(f"{len(names)} {state}" for state, names in sorted(by_outcome.items()))
    text = f"GitOps apply {apply_id} of {repository} at {commit[:12]}: {outcome}"
    text += f" ({stopped})" if stopped else ""
    text += f". {counts or 'nothing to do'}."
    failed = by_outcome.get("failed", [])
    if failed:
        text += f" Failed: {_names(failed)}."
    return {
        "text": text,
        "citrus": {
            "event": "apply",
            "applyId": apply_id,
            "repository": repository,
            "commit": commit,
            "outcome": outcome,
            "stopped": stopped,
            "servers": [
                {"name": r.name, "action": r.action, "wave": r.wave, "outcome": r.outcome}
                for r in rows
            ],
        },
    }


def drift_message(repository: str, drifts: Iterable[DriftResult]) -> dict[str, Any]:
    rows = list(drifts)
    drifted = [d.name for d in rows if d.changes]
    errors = [d.name for d in rows if d.error]
    if errors:
        outcome = "error"
    elif drifted:
        outcome = "drifted"
    else:
        outcome = "in sync"
    text = f"GitOps drift check of {repository}: {outcome}, {len(rows)} server(s) checked."
    if drifted:
        text += f" Drifted: {_names(drifted)}."
    if errors:
        text += f" Could not check: {_names(errors)}."
    return {
        "text": text,
        "citrus": {
            "event": "drift",
            "repository": repository,
            "outcome": outcome,
            "drifted": drifted,
            "errors": errors,
            "checked": len(rows),
        },
    }
