"""The pure rules of `apply`: waves, blast radius, a server's verdict, when to stop, the table."""

from __future__ import annotations

import pytest

from citrus_deploy.gitops.apply import (
    blast_radius_error,
    destroy_limit,
    overall_outcome,
    plan_errors,
    render_table,
    stale_plan_error,
    targets_of,
)
from citrus_deploy.gitops.rollout import (
    BUSY,
    CANARY,
    DESTROY,
    FAILED,
    NOT_STARTED,
    REST,
    SKIPPED,
    SUCCEEDED,
    TEN_PERCENT,
    Result,
    Target,
    Wave,
    plan_waves,
    stop_reason,
    verdict,
)


def ups(count: int, action: str = "update") -> list[Target]:
    return [Target(f"web-{i:02d}", action, {"serverName": f"web-{i:02d}"}) for i in range(count)]


def destroys(count: int) -> list[Target]:
    return [Target(f"old-{i}", "destroy") for i in range(count)]


def sizes(waves: list[Wave]) -> list[tuple[str, int]]:
    return [(w.label, len(w.targets)) for w in waves]


# -- waves ------------------------------------------------------------------------------------


def test_waves_are_a_canary_then_ten_percent_of_the_rest_then_the_rest() -> None:
    waves = plan_waves(ups(21), [])
    assert sizes(waves) == [(CANARY, 1), (TEN_PERCENT, 2), (REST, 18)]
    assert [w.number for w in waves] == [1, 2, 3]
    ordered = [t.name for w in waves for t in w.targets]
    assert ordered == [t.name for t in ups(21)]  # every server once, in the plan's order


def test_ten_percent_is_at_least_one_server() -> None:
    assert sizes(plan_waves(ups(3), [])) == [(CANARY, 1), (TEN_PERCENT, 1), (REST, 1)]
    assert sizes(plan_waves(ups(2), [])) == [(CANARY, 1), (TEN_PERCENT, 1)]
    assert sizes(plan_waves(ups(1), [])) == [(CANARY, 1)]


def test_a_larger_canary() -> None:
    assert sizes(plan_waves(ups(105), [], canary=5)) == [
        (CANARY, 5),
        (TEN_PERCENT, 10),
        (REST, 90),
    ]
    assert sizes(plan_waves(ups(3), [], canary=5)) == [(CANARY, 3)]


def test_destroys_come_after_every_up_in_a_wave_of_their_own() -> None:
    waves = plan_waves(ups(4), destroys(2))
    assert sizes(waves) == [(CANARY, 1), (TEN_PERCENT, 1), (REST, 2), (DESTROY, 2)]
    assert waves[-1].number == 4
    assert all(t.kind == "destroy" for t in waves[-1].targets)
    assert all(t.kind == "up" for w in waves[:-1] for t in w.targets)


def test_only_destroys() -> None:
    assert sizes(plan_waves([], destroys(3))) == [(DESTROY, 3)]
    assert plan_waves([], []) == []


def test_a_canary_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_waves(ups(3), [], canary=0)


# -- blast radius -----------------------------------------------------------------------------


def test_the_limit_is_three_or_five_percent_of_the_fleet() -> None:
    assert destroy_limit(10) == 3
    assert destroy_limit(60) == 3
    assert destroy_limit(100) == 5
    assert destroy_limit(1000) == 50


def test_up_to_the_limit_needs_no_allowance() -> None:
    targets = [*destroys(2), Target("web-1", "replace"), *ups(10)]
    assert blast_radius_error(targets, 20, None) is None


def test_over_the_limit_is_refused_naming_the_count_and_the_servers() -> None:
    targets = [*destroys(3), Target("web-1", "replace"), *ups(10, "create")]
    error = blast_radius_error(targets, 20, None)
    assert error is not None
    assert "destroys or replaces 4 servers" in error
    assert "old-0 (destroy), old-1 (destroy), old-2 (destroy), web-1 (replace)" in error
    assert "--allow-destroy 4" in error
    assert "web-00" not in error  # creates are not counted, not named


def test_allow_destroy_must_cover_the_count() -> None:
    targets = [*destroys(4)]
    assert blast_radius_error(targets, 20, 4) is None
    assert blast_radius_error(targets, 20, 10) is None
    error = blast_radius_error(targets, 20, 3)
    assert error is not None
    assert "--allow-destroy 3 allows only 3" in error


def test_five_percent_of_a_large_fleet() -> None:
    targets = [Target(f"web-{i}", "replace") for i in range(50)]
    assert blast_radius_error(targets, 1000, None) is None
    assert blast_radius_error([*targets, Target("x", "destroy")], 1000, None) is not None


# -- the plan ---------------------------------------------------------------------------------


def plan(*servers: dict[str, object], commit: str = "a" * 40) -> dict[str, object]:
    return {"commit": commit, "repository": "acme/fleet", "servers": list(servers)}


def server(name: str, action: str, **extra: object) -> dict[str, object]:
    return {"name": name, "action": action, "config": {"serverName": name}, **extra}


def test_a_removed_file_destroys_only_with_prune() -> None:
    p = plan(server("a", "create"), server("b", "destroy", prune=True), server("c", "unchanged"))
    up, down, skipped = targets_of(p, prune=False)
    assert [t.name for t in up] == ["a"]
    assert down == []
    assert [(r.name, r.outcome) for r in skipped] == [("b", SKIPPED)]
    assert "--prune" in (skipped[0].error or "")
    up, down, skipped = targets_of(p, prune=True)
    assert [t.name for t in down] == ["b"]
    assert skipped == []


def test_plan_errors_include_the_folders_own() -> None:
    p = plan(server("a", "error", errors=["fleet/Pulumi.a.yaml:2: size: unknown"]))
    p["errors"] = ["fleet/web.yml: not a stack file"]
    assert plan_errors(p) == [
        "fleet/web.yml: not a stack file",
        "a: fleet/Pulumi.a.yaml:2: size: unknown",
    ]
    assert plan_errors(plan(server("a", "create"))) == []


def test_a_plan_for_another_commit_is_stale() -> None:
    given = plan(server("a", "create"), commit="1" * 40)
    fresh = plan(server("a", "create"), commit="2" * 40)
    assert stale_plan_error(given, fresh) == (
        f"plan made for {'1' * 40}, HEAD is {'2' * 40}: plan again"
    )


def test_a_plan_whose_actions_differ_from_a_fresh_one_is_stale() -> None:
    given = plan(server("a", "create"), server("b", "update"))
    assert stale_plan_error(given, plan(server("a", "create"), server("b", "update"))) is None
    error = stale_plan_error(given, plan(server("a", "unchanged"), server("b", "update")))
    assert error is not None
    assert "a (create in the plan, unchanged now)" in error
    assert "b (" not in error
    changed = plan(server("a", "create"), {**server("b", "update"), "config": {"size": "x"}})
    assert stale_plan_error(given, changed) is not None


# -- verdicts and stop rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "state", "server", "waited", "expected"),
    [
        ("up", "queued", None, 0, None),
        ("up", "running", "provisioning", 0, None),
        ("up", "succeeded", "provisioning", 5, None),
        ("up", "succeeded", None, 5, None),
        ("up", "succeeded", "active", 0, SUCCEEDED),
        ("up", "succeeded", "failed", 0, FAILED),
        ("up", "succeeded", "provisioning", 10, FAILED),
        ("up", "failed", None, 0, FAILED),
        ("up", "needs_operator", "active", 0, FAILED),
        ("destroy", "succeeded", None, 0, SUCCEEDED),
        ("destroy", "running", "active", 0, None),
        ("destroy", "failed", "active", 0, FAILED),
    ],
)
def test_verdict(
    kind: str, state: str, server: str | None, waited: float, expected: str | None
) -> None:
    found = verdict(kind, state, "boom", server, waited, 10)
    assert (found[0] if found else None) == expected


def test_verdicts_say_why() -> None:
    assert verdict("up", "failed", "size: bad", None, 0, 10) == (FAILED, "size: bad")
    assert verdict("up", "succeeded", None, "provisioning", 10, 10) == (
        FAILED,
        "the agent was not online 10s after the deployment",
    )
    found = verdict("up", "needs_operator", "killed", None, 0, 10)
    assert found is not None
    assert found[1] == "needs an operator: killed"


def results_for(wave: Wave, failed: int) -> dict[str, Result]:
    return {
        t.name: Result(t.name, t.action, wave.number, outcome=FAILED if i < failed else SUCCEEDED)
        for i, t in enumerate(wave.targets)
    }


def test_any_canary_failure_stops() -> None:
    wave = Wave(1, CANARY, tuple(ups(3)))
    assert stop_reason(wave, results_for(wave, 0)) is None
    assert stop_reason(wave, results_for(wave, 1)) == "the canary failed (web-00)"


def test_a_wave_stops_only_when_more_than_ten_percent_failed() -> None:
    wave = Wave(3, REST, tuple(ups(20)))
    assert stop_reason(wave, results_for(wave, 2)) is None  # exactly 10%
    reason = stop_reason(wave, results_for(wave, 3))
    assert reason == "3 of the 20 servers of wave 3 (rest) failed, more than 10%"
    small = Wave(2, TEN_PERCENT, tuple(ups(2)))
    assert stop_reason(small, results_for(small, 1)) is not None


def test_overall_outcome() -> None:
    ok = [Result("a", "create", 1, 1, SUCCEEDED)]
    assert overall_outcome(ok, stopped=False) == SUCCEEDED
    assert overall_outcome([*ok, Result("b", "destroy", outcome=SKIPPED)], False) == SUCCEEDED
    assert overall_outcome([*ok, Result("c", "update", 2, 3, FAILED)], False) == FAILED
    assert overall_outcome(ok, stopped=True) == "stopped"


def test_the_table_has_one_line_per_server_with_its_errors_first_line() -> None:
    table = render_table(
        [
            Result("web-1", "create", 1, 12, SUCCEEDED),
            Result("web-22", "update", 2, 13, FAILED, "size: bad\nmore detail"),
            Result("web-3", "update", 3, None, NOT_STARTED),
            Result("db-1", "update", 2, None, FAILED, BUSY),
        ]
    )
    assert table.splitlines() == [
        "SERVER  ACTION  WAVE  DEPLOYMENT  OUTCOME      ERROR",
        "web-1   create  1     12          succeeded",
        "web-22  update  2     13          failed       size: bad",
        "web-3   update  3     -           not started",
        "db-1    update  2     -           failed       busy: a deployment is in progress",
    ]
