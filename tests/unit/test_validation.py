"""Field rules: what each accepts, and that a refusal names the field and the rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from citrus_deploy.errors import InvalidValue
from citrus_deploy.program import validation

Rule = Callable[[Any, str], Any]

ACCEPTED: list[tuple[Rule, Any]] = [
    (validation.server_name, "web-1"),
    (validation.server_name, "web-1.eu.example"),
    (validation.server_name, "a" * 63),
    (validation.region, "sfo3"),
    (validation.size, "s-1vcpu-512mb-10gb"),
    (validation.image, "debian-12-x64"),
    (validation.image, "123456"),
    (validation.engine_ws_url, "wss://engine.citrushost.io"),
    (validation.engine_ws_url, "ws://127.0.0.1:8080/hub?x='$HOME'&y=$(id)"),
    (validation.repo_url, "https://github.com/limedrop-byte/citrus-agent.git"),
    (validation.repo_url, "http://127.0.0.1:9418/o/r.git"),
    (validation.git_ref, "main"),
    (validation.git_ref, "release/v1.2"),
    (validation.git_ref, "0123456789abcdef0123456789abcdef01234567"),
    (validation.github_token, "ghp_abcDEF123"),
    (validation.github_token, "github_pat_11ABC_x-y.z"),
    (validation.agent_id, "0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b"),
    (validation.agent_key, "0f" * 32),
    (validation.tags, ["citrus", "env:dev", "team_a-1"]),
    (validation.ssh_keys, ["3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa", "512190"]),
    (validation.vpc_uuid, "0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b"),
]

REFUSED: list[tuple[Rule, Any, str]] = [
    (validation.server_name, "", "is required"),
    (validation.server_name, "a" * 64, "at most 63 characters"),
    (validation.server_name, "web_1", "must be a hostname"),
    (validation.server_name, "-web", "must be a hostname"),
    (validation.server_name, "web..1", "must be a hostname"),
    (validation.server_name, "web;reboot", "must be a hostname"),
    (validation.server_name, 42, "is required and must be a non-empty string"),
    (validation.region, "SFO3", "region slug"),
    (validation.size, "s 1", "size slug"),
    (validation.image, "debian$(id)", "image slug"),
    (validation.engine_ws_url, "https://engine.example", "must start with ws:// or wss://"),
    (validation.engine_ws_url, "wss://", "must name a host"),
    (validation.engine_ws_url, "wss://u:p@engine.example", "must not carry credentials"),
    (validation.engine_ws_url, "wss://engine.example/#frag", "no spaces"),
    (validation.engine_ws_url, "wss://engine.example/ x", "no spaces"),
    (validation.engine_ws_url, 'wss://engine.example/"', "no spaces"),
    (validation.engine_ws_url, "wss://engine.example/\n", "no spaces"),
    (validation.engine_ws_url, "wss://engine.example:99999", "not a valid URL"),
    (validation.engine_ws_url, "wss://" + "a" * 2048, "at most 2048"),
    (validation.repo_url, "http://github.com/o/r.git", "must use https"),
    (validation.repo_url, "https://tok@github.com/o/r.git", "must not carry credentials"),
    (validation.repo_url, "https://github.com/o/r.git?x=1", "query string"),
    (validation.repo_url, "https://github.com", "repository path"),
    (validation.git_ref, "--upload-pack", "valid git ref"),
    (validation.git_ref, "--upload-pack=touch", "only letters"),
    (validation.git_ref, "a..b", "valid git ref"),
    (validation.git_ref, "main;id", "only letters"),
    (validation.git_ref, "x.lock", "valid git ref"),
    (validation.github_token, "tok en", "value hidden"),
    (validation.github_token, "tok'en", "value hidden"),
    (validation.agent_id, "not-a-uuid", "must be a UUID"),
    (validation.agent_id, "0B0E0F3C-1D2A-4C8E-9A7B-5C6D7E8F9A0B", "lowercase canonical"),
    (validation.agent_key, "0F" * 32, "64 lowercase hex"),
    (validation.agent_key, "0f" * 31, "64 lowercase hex"),
    (validation.tags, "citrus", "must be a list"),
    (validation.tags, ["ok", "ok"], "must not repeat"),
    (validation.ssh_keys, ["ssh-rsa AAAA"], "MD5 fingerprint"),
    (validation.vpc_uuid, "vpc-1", "must be a UUID"),
]


@pytest.mark.parametrize(("rule", "value"), ACCEPTED)
def test_accepts_and_returns_unchanged(rule: Rule, value: Any) -> None:
    assert rule(value, "field") == value


@pytest.mark.parametrize(("rule", "value", "reason"), REFUSED)
def test_refuses_naming_field_and_rule(rule: Rule, value: Any, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        rule(value, "theField")

    assert caught.value.field.startswith("theField")
    assert str(caught.value).startswith(caught.value.field + ": ")
    assert reason in caught.value.rule


def test_a_refused_secret_is_never_echoed() -> None:
    with pytest.raises(InvalidValue) as caught:
        validation.github_token("ghp_secret value", "githubToken")

    assert "ghp_secret" not in str(caught.value)


def test_list_errors_point_at_the_item() -> None:
    with pytest.raises(InvalidValue) as caught:
        validation.tags(["fine", "not fine"], "tags")

    assert caught.value.field == "tags[1]"


@pytest.mark.parametrize(("text", "expected"), [(True, True), ("false", False), ("TRUE", True)])
def test_boolean_takes_yaml_and_cli_spellings(text: Any, expected: bool) -> None:
    assert validation.boolean(text, "monitoring") is expected
