"""The one settings object of the HTTP service and its workers, read from the environment.

Required secrets (DATABASE_URL, ADMIN_TOKEN) have no default; placeholder tokens are refused
unless CITRUS_ENV=development. The stack config each deployment gets is built here, from these
settings plus the server and agent names, and checked with the program's own rules.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from citrus_deploy.database import check_conninfo
from citrus_deploy.errors import CitrusError

PROJECT = "citrus-deploy"
PLACEHOLDERS = {"", "changeme", "change-me", "changethis", "secret", "password", "token", "admin"}
ADMIN_TOKEN_MIN = 16
# What a bearer token can be: it travels as `Authorization: Bearer <token>`, an HTTP header, and
# is compared byte for byte. Whitespace (a newline left by `$(cat file)`), control characters
# and non-ASCII would make a token that no client can send as set, or one whose length counts
# characters that are not secret.
ADMIN_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # finite: a duration
# A list from the environment: JSON (`["a", "b"]`) or comma-separated (`a,b`).
WordList = Annotated[list[str], NoDecode]


def default_state_dir() -> Path:
    """Where a worker keeps what is its own: $XDG_STATE_HOME/citrus-deploy, else
    ~/.local/state/citrus-deploy (systemd's StateDirectory= sets CITRUS_STATE_DIR instead)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "citrus-deploy"


# The Pulumi CLI keeps state itself (a "DIY backend") only for these URL schemes (postgres://
# since CLI 3.176); it takes any other URL for the address of a Pulumi Cloud service and tries
# to log in there. https:// is Pulumi Cloud (or a self-hosted one).
DIY_BACKEND_SCHEMES = ("file", "s3", "gs", "azblob", "postgres")
CLOUD_BACKEND_SCHEMES = ("https",)


def check_backend_url(url: str) -> None:
    """Raises ValueError unless the CLI will use `url` as the state backend it names.

    Checked at start (web, worker, all): otherwise a postgresql:// URL would surface only as a
    failed deployment, the CLI asking to log in to a Pulumi Cloud at the database's host. The
    message never echoes the URL: a postgres:// one carries the database password.
    """
    scheme = urlsplit(url).scheme
    if scheme == "postgresql":
        raise ValueError(
            "the Pulumi CLI would take this postgresql:// URL for a Pulumi Cloud URL (and try "
            "to log in to that host): its PostgreSQL state backend (CLI >= 3.176) answers only "
            "to postgres://. Fix: the same URL with postgres:// in place of postgresql:// "
            "(postgres://user:password@host:5432/db)"
        )
    if scheme not in DIY_BACKEND_SCHEMES + CLOUD_BACKEND_SCHEMES:
        found = f"the scheme {scheme}://" if scheme else "no scheme"
        diy = ", ".join(f"{name}://" for name in DIY_BACKEND_SCHEMES)
        raise ValueError(
            f"has {found}; the accepted ones are the Pulumi CLI's state backends {diy}, and "
            "https:// for Pulumi Cloud (unset, it is file://$CITRUS_STATE_DIR/pulumi)"
        )


class SettingsError(CitrusError):
    """The service's own settings are unusable; the message says which and why."""


class Settings(BaseSettings):
    """Environment variables (or a .env file named by CITRUS_ENV_FILE) of web and worker."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    citrus_env: Literal["production", "development"] = Field(
        "production", validation_alias="CITRUS_ENV"
    )
    database_url: SecretStr = Field(validation_alias="DATABASE_URL")
    admin_token: SecretStr = Field(validation_alias="ADMIN_TOKEN")

    # Where deployments run and keep Pulumi state.
    deployer: Literal["automation", "test-engine"] = Field(
        "automation", validation_alias="CITRUS_DEPLOYER"
    )
    # The worker's own directory: its Pulumi work directory (`work/`: the Pulumi.yaml it runs
    # and the stacks' settings files, a cache) and, unless PULUMI_BACKEND_URL says otherwise,
    # the stacks' state (`pulumi/`).
    state_dir: Path = Field(default_factory=default_state_dir, validation_alias="CITRUS_STATE_DIR")
    pulumi_backend_url: str = Field("", validation_alias="PULUMI_BACKEND_URL")
    pulumi_config_passphrase: SecretStr | None = Field(
        None, validation_alias="PULUMI_CONFIG_PASSPHRASE"
    )
    pulumi_config_passphrase_file: Path | None = Field(
        None, validation_alias="PULUMI_CONFIG_PASSPHRASE_FILE"
    )
    test_engine_step_delay: float = Field(
        0.0, ge=0, le=60, validation_alias="CITRUS_TEST_ENGINE_STEP_DELAY"
    )

    # The stack config secrets and values of the old platform's environment.
    digitalocean_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DIGITALOCEAN_TOKEN", "DO_API_TOKEN")
    )
    github_token: SecretStr | None = Field(None, validation_alias="GITHUB_TOKEN")
    engine_ws_url: str | None = Field(None, validation_alias="ENGINE_WS_URL")
    # Given to every server the service deploys (HTTP, and GitOps files that set none):
    # DigitalOcean SSH key ids or fingerprints, and droplet tags.
    ssh_keys: WordList = Field(default_factory=list, validation_alias="CITRUS_SSH_KEYS")
    droplet_tags: WordList = Field(default_factory=list, validation_alias="CITRUS_DROPLET_TAGS")

    # The stale-agent check.
    agent_connect_timeout: Seconds = Field(600, validation_alias="AGENT_CONNECT_TIMEOUT")
    remediate_failed_servers: bool = Field(False, validation_alias="CITRUS_REMEDIATE_FAILED")
    remediate_backoff_seconds: Seconds = Field(300, validation_alias="CITRUS_REMEDIATE_BACKOFF")

    # Workers.
    worker_concurrency: int = Field(4, ge=1, le=100, validation_alias="WORKER_CONCURRENCY")
    droplet_creation_slots: int = Field(10, ge=1, le=100, validation_alias="DROPLET_CREATION_SLOTS")
    deploy_max_attempts: int = Field(4, ge=1, le=20, validation_alias="DEPLOY_MAX_ATTEMPTS")
    retry_backoff_seconds: Seconds = Field(5, validation_alias="RETRY_BACKOFF_SECONDS")
    # A stopped deployment gets SIGTERM (Pulumi finishes its in-flight steps and releases the
    # stack's lock), and SIGKILL only after this grace.
    deploy_stop_grace_seconds: Seconds = Field(60, validation_alias="DEPLOY_STOP_GRACE")
    worker_heartbeat_interval: Seconds = Field(10, validation_alias="WORKER_HEARTBEAT_INTERVAL")
    worker_stalled_timeout: Seconds = Field(30, validation_alias="WORKER_STALLED_TIMEOUT")

    # Web.
    host: str = Field("127.0.0.1", validation_alias="CITRUS_HOST")
    port: int = Field(8000, ge=1, le=65535, validation_alias="CITRUS_PORT")
    wait_max_seconds: Seconds = Field(120, validation_alias="CITRUS_WAIT_MAX_SECONDS")
    max_body_bytes: int = Field(4096, ge=64, validation_alias="CITRUS_MAX_BODY_BYTES")
    db_timeout_seconds: Seconds = Field(5, validation_alias="CITRUS_DB_TIMEOUT")
    db_pool_size: int = Field(10, ge=1, le=200, validation_alias="CITRUS_DB_POOL_SIZE")
    output_tail_chars: int = Field(4000, ge=0, le=1048576, validation_alias="CITRUS_OUTPUT_TAIL")
    # A request body must arrive within this many seconds of the headers (uvicorn has no such
    # deadline: a client that stops half-way would hold its connection for ever).
    body_timeout_seconds: Seconds = Field(10, le=600, validation_alias="CITRUS_BODY_TIMEOUT")
    # Open connections (idle keep-alive ones included) one web process serves; past it uvicorn
    # answers 503 at once instead of running out of file descriptors.
    max_connections: int = Field(1000, ge=1, le=100_000, validation_alias="CITRUS_MAX_CONNECTIONS")
    # POST/DELETE answer 503 queue_full while this many deployments are queued or running
    # (0: no cap). Workers take minutes per deployment: past this, a client loops or floods.
    max_queued: int = Field(1000, ge=0, le=10_000_000, validation_alias="CITRUS_MAX_QUEUED")
    # Swagger UI at /docs (assets from the fastapi-offline package, never a CDN). Unset: on with
    # CITRUS_ENV=development, off otherwise: an operator types the token into its page.
    docs: bool | None = Field(None, validation_alias="CITRUS_DOCS")
    # The operator console (web/console): how long a sign-in lasts, and whether its
    # cookie is Secure (unset: when the request came over https, as uvicorn sees it).
    session_seconds: int = Field(
        8 * 3600, ge=60, le=30 * 86400, validation_alias="CITRUS_SESSION_SECONDS"
    )
    cookie_secure: bool | None = Field(None, validation_alias="CITRUS_COOKIE_SECURE")
    # The reverse proxies whose X-Forwarded-For (the client's address) and X-Forwarded-Proto
    # uvicorn believes: comma-separated addresses or networks. Unset: none, the client is the
    # connection's peer (the limit on wrong admin tokens counts per client: web/failures.py).
    forwarded_allow_ips: str | None = Field(None, validation_alias="CITRUS_FORWARDED_ALLOW_IPS")

    @field_validator("ssh_keys", "droplet_tags", mode="before")
    @classmethod
    def _word_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [word.strip() for word in text.split(",") if word.strip()]
        return value

    @field_validator("pulumi_backend_url")
    @classmethod
    def _backend_url(cls, value: str) -> str:
        if value:
            check_backend_url(value)
        return value

    @model_validator(mode="after")
    def _default_backend(self) -> Settings:
        if not self.pulumi_backend_url:
            self.pulumi_backend_url = f"file://{self.state_dir / 'pulumi'}"
        return self

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "work"

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        items = [item.strip() for item in value.split(",")]
        if "*" in items:
            raise ValueError(
                "CITRUS_FORWARDED_ALLOW_IPS=* would believe the X-Forwarded-For of every "
                "client, so anyone could pose as any address and the limit on wrong admin "
                "tokens would count nothing: name the proxies' addresses (127.0.0.1, "
                "10.0.0.0/8)"
            )
        for item in items:
            try:
                ipaddress.ip_network(item)
            except ValueError:
                raise ValueError(
                    f"CITRUS_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network "
                    "(comma-separated, such as 127.0.0.1,10.0.0.0/8; a network without host "
                    "bits)"
                ) from None
        return ",".join(items)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        check_conninfo(value.get_secret_value(), "DATABASE_URL")
        return value

    @model_validator(mode="after")
    def _secrets_are_real(self) -> Settings:
        token = self.admin_token.get_secret_value()
        if token and not set(token) <= ADMIN_TOKEN_CHARS:
            raise ValueError(
                "ADMIN_TOKEN may hold only printable ASCII without spaces (it is sent as "
                "`Authorization: Bearer <token>`): no whitespace (such as a newline at the end "
                "of the file it was read from), no control characters, no non-ASCII"
            )
        if self.citrus_env != "development":
            if token.lower() in PLACEHOLDERS or len(token) < ADMIN_TOKEN_MIN:
                raise ValueError(
                    f"ADMIN_TOKEN must be a real secret of at least {ADMIN_TOKEN_MIN} characters "
                    "(e.g. `openssl rand -hex 32`); placeholders are accepted only with "
                    "CITRUS_ENV=development"
                )
        elif token == "":
            raise ValueError("ADMIN_TOKEN must not be empty")
        return self

    @property
    def trusted_proxies(self) -> list[str]:
        """CITRUS_FORWARDED_ALLOW_IPS as uvicorn's forwarded_allow_ips (empty: trust none)."""
        return self.forwarded_allow_ips.split(",") if self.forwarded_allow_ips else []

    @property
    def docs_enabled(self) -> bool:
        return self.docs if self.docs is not None else self.citrus_env == "development"

    def check_deployer(self) -> None:
        """What only workers need: the passphrase, a virtual environment for the CLI to run
        the program in, a state directory they can write. Raises SettingsError."""
        import sys

        if not (self.pulumi_config_passphrase or self.pulumi_config_passphrase_file):
            raise SettingsError(
                f"CITRUS_DEPLOYER={self.deployer} needs PULUMI_CONFIG_PASSPHRASE or "
                "PULUMI_CONFIG_PASSPHRASE_FILE (it encrypts the secrets in the stacks' state)"
            )
        if self.deployer == "automation" and sys.prefix == sys.base_prefix:
            raise SettingsError(
                f"the worker runs on {sys.executable}, which is not a virtual environment: the "
                "Pulumi CLI runs the program with the worker's own environment (its "
                "`virtualenv`), so start the worker from the virtual environment the package "
                "is installed in (e.g. .venv/bin/citrus-deploy service worker)"
            )
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"CITRUS_STATE_DIR={self.state_dir} cannot be used ({exc.strerror}): the worker "
                "keeps its Pulumi work directory there"
            ) from None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, and from the file CITRUS_ENV_FILE names (a systemd
    EnvironmentFile's syntax; the environment wins); raises SettingsError naming every bad
    variable."""
    env_file = os.environ.get("CITRUS_ENV_FILE") or None
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"  - {where}: {err['msg']}")
        raise SettingsError("invalid service settings:\n" + "\n".join(problems)) from None
