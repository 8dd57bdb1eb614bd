"""Notifications when an apply or a drift check ends: a real local HTTP server receives each
message and checks its signature the way docs/gitops-pipeline.md tells a receiver to; a webhook
that fails, hangs or is misconfigured is reported and never fails the command."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from citrus_deploy.gitops import notify
from citrus_deploy.gitops.drift import Drift
from citrus_deploy.gitops.rollout import Result
from tests.gitops.conftest import REPO, FleetRepo, Hub, apply, gitops, make_fleet
from tests.paths import REPO as CHECKOUT

SECRET = "whsec-0123456789abcdef"
DOCS = CHECKOUT / "docs" / "gitops-pipeline.md"


def documented_check() -> Callable[[bytes, Any, bytes], bool]:
    """The receiver's check exactly as docs/gitops-pipeline.md prints it."""
    (code,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    scope: dict[str, Any] = {}
    exec(code, scope)  # noqa: S102 (our own documentation's example)
    check: Callable[[bytes, Any, bytes], bool] = scope["verified"]
    return check


TOKEN_IN_PATH = "T000/B000/hush-hush-token"


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records what arrived, answers `status` (or hangs)."""

    status: int = 200
    hang: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if receiver.hang:
                    time.sleep(receiver.hang)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN_IN_PATH}"

    def env(self, **extra: str) -> dict[str, str]:
        return {notify.URL_ENV: self.url, notify.SECRET_ENV: SECRET, **extra}

    def verified(self, index: int = -1) -> dict[str, Any]:
        """The message, after the receiver's checks (the documented recipe, as printed)."""
        got = self.received[index]
        assert documented_check()(SECRET.encode(), got["headers"], got["body"])
        assert not documented_check()(b"not the secret, 16+", got["headers"], got["body"])
        assert got["headers"]["Content-Type"] == "application/json"
        message: dict[str, Any] = json.loads(got["body"])
        return message

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


MESSAGE = {"text": "GitOps apply 1: succeeded"}


def test_a_message_arrives_signed_and_the_signature_verifies(receiver: Receiver) -> None:
    err = io.StringIO()
    assert notify.notify(MESSAGE, environ=receiver.env(), err=err) is True
    assert err.getvalue() == ""
    assert receiver.verified() == MESSAGE
    got = receiver.received[0]
    assert got["path"] == f"/services/{TOKEN_IN_PATH}"
    timestamp, body = got["headers"][notify.TIMESTAMP_HEADER], got["body"]
    signature = got["headers"][notify.SIGNATURE_HEADER]
    assert notify.verify(SECRET.encode(), timestamp, body, signature)
    # What verify refuses: another secret, a changed body, an old (replayed) timestamp.
    assert not notify.verify(b"another secret, 16+", timestamp, body, signature)
    assert not notify.verify(SECRET.encode(), timestamp, body + b" ", signature)
    assert not notify.verify(SECRET.encode(), timestamp, body, signature, now=int(timestamp) + 301)
    assert not notify.verify(SECRET.encode(), "yesterday", body, signature)


def test_no_webhook_configured_sends_nothing_and_says_nothing() -> None:
    err = io.StringIO()
    assert notify.notify(MESSAGE, environ={}, err=err) is False
    assert err.getvalue() == ""


@pytest.mark.parametrize("status", [500, 404, 302])
def test_an_http_error_is_reported_never_raised(receiver: Receiver, status: int) -> None:
    receiver.status = status
    err = io.StringIO()
    assert notify.notify(MESSAGE, environ=receiver.env(), err=err) is False
    assert err.getvalue() == f"notify: not sent: 127.0.0.1 answered HTTP {status}\n"
    assert len(receiver.received) == 1  # a redirect is not followed


def test_a_hanging_webhook_gives_up_after_its_timeout(receiver: Receiver) -> None:
    receiver.hang = 3
    err = io.StringIO()
    env = receiver.env(**{notify.TIMEOUT_ENV: "0.2"})
    assert notify.notify(MESSAGE, environ=env, err=err) is False
    assert err.getvalue() == "notify: not sent: 127.0.0.1 did not answer in 0.2s\n"


def test_an_unreachable_webhook_is_reported(receiver: Receiver) -> None:
    env = receiver.env()
    receiver.close()
    err = io.StringIO()
    assert notify.notify(MESSAGE, environ=env, err=err) is False
    assert err.getvalue().startswith("notify: not sent: cannot reach 127.0.0.1: ")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({notify.URL_ENV: "file:///etc/passwd", notify.SECRET_ENV: SECRET}, "CITRUS_NOTIFY_URL"),
        ({notify.URL_ENV: "https:///x", notify.SECRET_ENV: SECRET}, "CITRUS_NOTIFY_URL"),
        ({notify.URL_ENV: "https://hooks.example/x"}, "CITRUS_NOTIFY_SECRET"),
        (
            {notify.URL_ENV: "https://hooks.example/x", notify.SECRET_ENV: "short"},
            "CITRUS_NOTIFY_SECRET",
        ),
        (
            {
                notify.URL_ENV: "https://h.example/",
                notify.SECRET_ENV: SECRET,
                "CITRUS_NOTIFY_TIMEOUT": "600",
            },
            "CITRUS_NOTIFY_TIMEOUT",
        ),
        (
            {
                notify.URL_ENV: "https://h.example/",
                notify.SECRET_ENV: SECRET,
                "CITRUS_NOTIFY_TIMEOUT": "nan",
            },
            "CITRUS_NOTIFY_TIMEOUT",
        ),
    ],
)
def test_a_misconfigured_webhook_is_reported_by_name(env: dict[str, str], error: str) -> None:
    err = io.StringIO()
    assert notify.notify(MESSAGE, environ=env, err=err) is False
    assert err.getvalue().startswith(f"notify: not sent: {error}")


def test_the_secret_and_the_url_never_reach_the_report(receiver: Receiver) -> None:
    receiver.status = 500
    for env in (receiver.env(), {notify.URL_ENV: receiver.url, notify.SECRET_ENV: "x"}):
        err = io.StringIO()
        notify.notify(MESSAGE, environ=env, err=err)
        assert TOKEN_IN_PATH not in err.getvalue()
        assert SECRET not in err.getvalue()
    assert "whsec" not in repr(notify.from_env(receiver.env()))


def test_the_apply_message_says_how_it_ended() -> None:
    results = [
        Result("web-1", "update", wave=1, outcome="succeeded"),
        Result("web-2", "update", wave=2, outcome="failed", error="agent never came: key=abc"),
        Result("web-3", "update", wave=2, outcome="not started"),
    ]
    message = notify.apply_message(
        apply_id=7,
        repository="limedrop/fleet",
        commit="c" * 40,
        outcome="failed",
        stopped="wave 2 failed",
        results=results,
    )
    assert message["text"] == (
        "GitOps apply 7 of limedrop/fleet at cccccccccccc: failed (wave 2 failed). "
        "1 failed, 1 not started, 1 succeeded. Failed: web-2."
    )
    assert message["citrus"]["servers"][1] == {
        "name": "web-2",
        "action": "update",
        "wave": 2,
        "outcome": "failed",
    }
    assert "key=abc" not in json.dumps(message)  # error texts stay in the job's log


def test_the_drift_message_names_the_drifted_servers() -> None:
    drifts = [Drift("web-1"), Drift("web-2", changes=["droplet deleted outside Pulumi"])]
    message = notify.drift_message("limedrop/fleet", drifts)
    assert message["text"] == (
        "GitOps drift check of limedrop/fleet: drifted, 2 server(s) checked. Drifted: web-2."
    )
    assert message["citrus"]["drifted"] == ["web-2"]
    many = [Drift(f"web-{i}", error="timeout") for i in range(25)]
    text = notify.drift_message("r", many)["text"]
    assert text.startswith("GitOps drift check of r: error, 25 server(s) checked.")
    assert text.endswith("web-19 and 5 more.")


def test_apply_and_drift_notify_and_a_failing_webhook_never_fails_them(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in receiver.env().items():
        monkeypatch.setenv(name, value)
    make_fleet(fleet_repo, "web-1")
    code, out, _ = apply(capsys, fleet_repo, "--workers", "1", "--agent-timeout", "20")
    assert code == 0, out
    applied = receiver.verified()
    assert applied["citrus"]["event"] == "apply"
    assert applied["citrus"]["outcome"] == "succeeded"
    assert applied["text"].endswith("1 succeeded.")

    receiver.status = 500  # the webhook breaks: the drift check still says what it saw
    code, out, err = gitops(
        capsys, "drift", str(fleet_repo.fleet), "--repository", REPO, "--workers", "1"
    )
    assert code == 0, out
    assert out.strip() == "1 server(s) checked: 0 drifted"
    assert "notify: not sent: 127.0.0.1 answered HTTP 500" in err
    drifted = receiver.verified()
    assert drifted["citrus"] == {**drifted["citrus"], "event": "drift", "outcome": "in sync"}
