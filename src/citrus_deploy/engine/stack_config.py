"""What a deployment gets from the service's settings: each stack's config (typed, its secrets
only from the settings), the check that the service can build valid stacks at all, what the
engine's output must never show, and what the deployer's child process needs."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from citrus_deploy.program import config as program_config
from citrus_deploy.settings import PROJECT, Settings, SettingsError

# Stand-ins the engine stand-in uses when a real value is not set: it fakes DigitalOcean and never
# contacts the hub or the agent repository, but the program's rules still want these fields.
TEST_ENGINE_STAND_INS = {
    "githubToken": "test-engine-github-token",
    "engineWsUrl": "ws://127.0.0.1:8080",
    "digitalocean:token": "test-engine-do-token",
}


def stack_config(settings: Settings, record: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """`project:key` (or `digitalocean:token`) -> (value, secret) for one stack.

    `record` is the non-secret config kept in the deployment record: serverName and
    agentName over HTTP; a GitOps file's keys (size, tags, `digitalocean:apiEndpoint` ...).
    Keys without `:` get the project prefix; values keep their types (`true`, `["web"]`),
    which the deployer hands the CLI as the project declares them. The record's values win
    over the service's defaults (ENGINE_WS_URL, CITRUS_SSH_KEYS, CITRUS_DROPLET_TAGS);
    secrets always come from the service's settings, whatever the record holds.
    """
    values: dict[str, tuple[Any, bool]] = {}
    stand_ins = TEST_ENGINE_STAND_INS if settings.deployer == "test-engine" else {}
    plain: dict[str, Any] = {
        "engineWsUrl": settings.engine_ws_url or stand_ins.get("engineWsUrl"),
        "sshKeys": list(settings.ssh_keys) or None,
        "tags": list(settings.droplet_tags) or None,
    }
    for key, default in plain.items():
        if default:
            values[f"{PROJECT}:{key}"] = (default, False)
    for key, raw in record.items():
        if raw is None:
            continue
        full = key if ":" in key else f"{PROJECT}:{key}"
        values[full] = (raw, False)
    # Secrets come only from the service's settings, never from a record (even one edited
    # by hand): a record's value is dropped, not sent in the clear.
    values[f"{PROJECT}:databaseUrl"] = (settings.database_url.get_secret_value(), True)
    secret = {
        "githubToken": settings.github_token,
        "digitalocean:token": settings.digitalocean_token,
    }
    for key, secret_value in secret.items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        value = secret_value.get_secret_value() if secret_value else stand_ins.get(key)
        if value:
            values[full] = (value, True)
        else:
            values.pop(full, None)
    return values


def check_stack_config(settings: Settings) -> None:
    """Runs the program's config rules on a sample stack; raises SettingsError if they fail.

    Web and worker call it at start, so a missing GITHUB_TOKEN is reported once, at start,
    rather than as a failed deployment per request.
    """
    flat = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, (v, _secret) in stack_config(settings, {"serverName": "probe-1"}).items()
    }
    prefix = f"{PROJECT}:"
    try:
        program_config.load(
            lambda key: flat.get(prefix + key),
            stack="probe-1",
            get_provider=lambda key: flat.get(f"digitalocean:{key}"),
            environ={},
        )
    except program_config.InvalidConfig as exc:
        raise SettingsError(f"the service cannot build valid stacks: {exc}") from None


def secret_values(settings: Settings) -> list[str]:
    """Every secret the engine output must never show (redacted before it is stored).

    Not ADMIN_TOKEN: a deployment never gets it (service.child.WORKER_ONLY_ENV).
    """
    found: list[str] = []
    for item in (
        settings.digitalocean_token,
        settings.github_token,
        settings.pulumi_config_passphrase,
    ):
        if item is not None and item.get_secret_value():
            found.append(item.get_secret_value())
    password = conninfo_to_dict(settings.database_url.get_secret_value()).get("password")
    if password:
        found.append(str(password))
    found.append(settings.database_url.get_secret_value())
    # A postgres:// state backend's URL holds its password, and the CLI shows the URL
    # when it cannot reach it (`unable to open state database "<url>"`).
    backend = urlsplit(settings.pulumi_backend_url)
    if backend.password:
        found += [backend.password, settings.pulumi_backend_url]
    return sorted(set(found), key=len, reverse=True)


def deployer_options(settings: Settings) -> dict[str, Any]:
    """What the deployer child process needs besides the stack config."""
    passphrase = settings.pulumi_config_passphrase
    return {
        "deployer": settings.deployer,
        "backend_url": settings.pulumi_backend_url,
        "passphrase": passphrase.get_secret_value() if passphrase else None,
        "passphrase_file": str(settings.pulumi_config_passphrase_file or "") or None,
        "step_delay": settings.test_engine_step_delay,
        "stop_grace": settings.deploy_stop_grace_seconds,
        "work_dir": str(settings.work_dir),
    }
