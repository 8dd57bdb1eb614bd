"""PULUMI_BACKEND_URL is checked when the settings load, so web, worker and all refuse it at start.

The Pulumi CLI keeps state itself only for the DIY schemes; any other URL it takes for a Pulumi
Cloud to log in to, so a wrong scheme would surface only as a failed deployment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citrus_deploy.settings import SettingsError, load_settings

BASE = {
    "DATABASE_URL": "postgresql://citrus@127.0.0.1:5432/citrus",
    "ADMIN_TOKEN": "admin-token-0123456789abcdef",
}


@pytest.mark.parametrize(
    "url",
    [
        "file:///var/lib/citrus/pulumi",
        "s3://citrus-state?region=us-east-1",
        "gs://citrus-state",
        "azblob://citrus-state",
        "postgres://pulumi:pw@db.internal:5432/pulumi_state",
        "https://api.pulumi.com",
    ],
)
def test_the_cli_backends_are_accepted(url: str) -> None:
    assert load_settings(**BASE, PULUMI_BACKEND_URL=url).pulumi_backend_url == url


def test_a_postgresql_url_is_refused_with_the_fix() -> None:
    password = "state-password-91c2"

    with pytest.raises(SettingsError) as raised:
        load_settings(
            **BASE, PULUMI_BACKEND_URL=f"postgresql://pulumi:{password}@db.internal/pulumi_state"
        )

    message = str(raised.value)
    assert "PULUMI_BACKEND_URL" in message
    assert "would take this postgresql:// URL for a Pulumi Cloud URL" in message
    assert "the same URL with postgres:// in place of postgresql://" in message
    assert password not in message


@pytest.mark.parametrize("url", ["mysql://db.internal/state", "http://pulumi.internal", "/var/s"])
def test_an_unknown_scheme_is_refused_naming_the_accepted_ones(url: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(**BASE, PULUMI_BACKEND_URL=url)

    message = str(raised.value)
    assert "PULUMI_BACKEND_URL" in message
    for scheme in ("file://", "s3://", "gs://", "azblob://", "postgres://", "https://"):
        assert scheme in message


def test_a_worker_outside_a_virtual_environment_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI runs the program with the worker's own environment (the work directory's
    `virtualenv`); a system interpreter would make the CLI create one and pip-install there."""
    import sys

    settings = load_settings(
        **BASE,
        CITRUS_DEPLOYER="automation",
        PULUMI_CONFIG_PASSPHRASE="pp",
        CITRUS_STATE_DIR=str(tmp_path),
    )
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)

    with pytest.raises(SettingsError, match="not a virtual environment"):
        settings.check_deployer()


def test_citrus_env_file_names_a_file_of_settings_the_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "citrus.env"
    env_file.write_text("CITRUS_PORT=8123\nCITRUS_DROPLET_TAGS=web,eu\nWORKER_CONCURRENCY=2\n")
    monkeypatch.setenv("CITRUS_ENV_FILE", str(env_file))
    monkeypatch.setenv("WORKER_CONCURRENCY", "7")

    settings = load_settings(**BASE)

    assert (settings.port, settings.droplet_tags) == (8123, ["web", "eu"])
    assert settings.worker_concurrency == 7
