"""`status`: per server the GitOps state and commits (the e2e test runs it on a real fleet)."""

from __future__ import annotations

from typing import Any

from citrus_deploy.gitops.status import NOT_APPLIED, render, rows
from citrus_deploy.store.ownership import Deployed

REPO = "acme/fleet"


def deployed(name: str, **values: Any) -> Deployed:
    base: dict[str, Any] = {
        "name": name,
        "managed_by": "gitops",
        "repository": REPO,
        "server_status": "active",
        "agent_status": "online",
        "droplet_id": "1",
        "applied_config": {"serverName": name},
        "applied_commit": "a" * 40,
        "applied_program": "p",
        "attempted_commit": "a" * 40,
        "last_kind": "up",
        "last_state": "succeeded",
        "last_error": None,
        "active": False,
    }
    return Deployed(**{**base, **values})


def test_each_state_with_its_commits() -> None:
    fleet = {
        "ready": deployed("ready"),
        "busy": deployed("busy", active=True, attempted_commit="b" * 40),
        "broken": deployed(
            "broken", last_state="failed", last_error="size: bad\nmore", attempted_commit="b" * 40
        ),
        "stuck": deployed("stuck", last_state="needs_operator", last_error="killed"),
        "gone": deployed("gone"),  # its file was removed, not yet pruned
        "other": deployed("other", managed_by="http", repository=None, applied_config=None),
    }
    entries = rows(["ready", "busy", "broken", "stuck", "new", "other"], fleet, REPO)
    by_name = {e["name"]: e for e in entries}
    assert [e["name"] for e in entries] == sorted(by_name)
    assert {n: e["state"] for n, e in by_name.items()} == {
        "ready": "Ready",
        "busy": "Reconciling",
        "broken": "Failed",
        "stuck": "Stalled",
        "gone": "Ready",
        "new": NOT_APPLIED,
        "other": NOT_APPLIED,
    }
    assert by_name["busy"]["lastAppliedCommit"] == "a" * 40
    assert by_name["busy"]["lastAttemptedCommit"] == "b" * 40
    assert by_name["gone"]["inFolder"] is False
    assert by_name["other"]["error"] == "managed by http"
    text = render(entries)
    assert "broken  Failed       aaaaaaaaaaaa  bbbbbbbbbbbb  size: bad" in text
    assert "gone    Ready        aaaaaaaaaaaa  aaaaaaaaaaaa  file removed" in text
    assert text.splitlines()[-1] == ("1 Failed, 2 NotApplied, 2 Ready, 1 Reconciling, 1 Stalled")


def test_another_repositorys_server_is_not_ours() -> None:
    fleet = {"web-1": deployed("web-1", repository="someone/else")}
    (entry,) = rows(["web-1"], fleet, REPO)
    assert entry["state"] == NOT_APPLIED
    assert entry["lastAppliedCommit"] is None
    assert entry["error"] == "managed by gitops (someone/else)"
    assert rows([], fleet, REPO) == []
