"""Stack config: Pulumi.yaml defaults, the old environment names, every bad field at once."""

from __future__ import annotations

import pytest

from citrus_deploy.program.config import InvalidConfig, load, project_defaults

VALID = {
    "engineWsUrl": "wss://engine.citrushost.io",
    "githubToken": "ghp_token",
    "databaseUrl": "postgresql://citrus@db.internal/citrus",
}
DO = {"token": "dop_v1_x"}


def test_defaults_are_the_old_platforms_and_come_from_pulumi_yaml() -> None:
    settings = load(VALID.get, stack="web-1", get_provider=DO.get, environ={})
    args = settings.args

    assert (args.region, args.size, args.image) == ("sfo3", "s-1vcpu-512mb-10gb", "debian-12-x64")
    assert args.server_name == "web-1"  # the stack name
    assert args.agent_repo_url == "https://github.com/limedrop-byte/citrus-agent.git"
    assert args.agent_repo_ref == "main"
    assert (args.tags, args.ssh_keys, args.vpc_uuid, args.monitoring) == ([], [], None, False)
    assert args.replace_on_boot_script_change is False
    assert project_defaults()["region"] == "sfo3"


def test_the_old_environment_names_keep_working() -> None:
    environ = {
        "ENGINE_WS_URL": "wss://engine.citrushost.io",
        "GITHUB_TOKEN": "ghp_from_env",
        "DATABASE_URL": "postgresql://citrus@db/citrus",
        "DO_API_TOKEN": "dop_from_old_name",
    }
    settings = load({}.get, stack="web-1", environ=environ)

    assert settings.args.engine_ws_url == "wss://engine.citrushost.io"
    assert settings.args.github_token == "ghp_from_env"
    assert settings.database_url == "postgresql://citrus@db/citrus"
    assert settings.do_token == "dop_from_old_name"


def test_stack_config_wins_over_the_environment() -> None:
    environ = {"GITHUB_TOKEN": "ghp_env", "DIGITALOCEAN_TOKEN": "dop_env"}
    settings = load(VALID.get, stack="web-1", get_provider=DO.get, environ=environ)

    assert (settings.args.github_token, settings.do_token) == ("ghp_token", "dop_v1_x")


def test_cli_strings_for_lists_and_booleans_are_parsed() -> None:
    values = {**VALID, "tags": '["a","b"]', "monitoring": "true", "serverName": "db-1"}
    args = load(values.get, stack="dev", get_provider=DO.get, environ={}).args

    assert (args.tags, args.monitoring, args.server_name) == (["a", "b"], True, "db-1")


def test_every_bad_field_is_reported_at_once_without_secret_values() -> None:
    values = {
        **VALID,
        "region": "Mars",
        "githubToken": "has space",
        "tags": "[not json",
        "databaseUrl": "",
    }
    with pytest.raises(InvalidConfig) as caught:
        load(values.get, stack="Not_A_Hostname", environ={})

    fields = [e.field for e in caught.value.errors]
    assert fields == [
        "serverName",
        "region",
        "githubToken",
        "tags",
        "databaseUrl",
        "digitalocean:token",
    ]
    assert "has space" not in str(caught.value)
    assert "stack name 'Not_A_Hostname'" in str(caught.value)


def test_repr_hides_secrets() -> None:
    settings = load(VALID.get, stack="web-1", get_provider=DO.get, environ={})

    assert "ghp_token" not in repr(settings)
    assert "dop_v1_x" not in repr(settings)
    assert "db.internal" not in repr(settings)


def test_agent_name_defaults_to_agent_dash_server_name_and_can_be_set() -> None:
    default = load(VALID.get, stack="web-1", get_provider=DO.get, environ={}).args
    values = {**VALID, "agentName": "agent-1732665600000"}
    explicit = load(values.get, stack="web-1", get_provider=DO.get, environ={}).args

    assert default.agent_name == "agent-web-1"
    assert explicit.agent_name == "agent-1732665600000"
