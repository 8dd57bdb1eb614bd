"""Stack configuration: Pulumi.yaml defaults, stack values, and the old env names as fallback.

`load` validates every field before the program registers a single resource and reports all bad
fields at once. Secrets are read as plain strings only to validate them; the component wraps them
with `Output.secret` before they reach the engine.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from citrus_deploy.database import check_conninfo
from citrus_deploy.errors import CitrusError, InvalidValue
from citrus_deploy.program import PROJECT_DIR, validation

PROJECT_FILE = PROJECT_DIR / "Pulumi.yaml"

# Config key -> environment variable of the old platform (or the provider's own) used when the
# key is not set in the stack.
ENV_FALLBACKS = {
    "engineWsUrl": "ENGINE_WS_URL",
    "githubToken": "GITHUB_TOKEN",
    "databaseUrl": "DATABASE_URL",
}
DO_TOKEN_ENV = ("DIGITALOCEAN_TOKEN", "DO_API_TOKEN")


class InvalidConfig(CitrusError):
    """One or more config fields break their rules; lists every one."""

    def __init__(self, errors: list[InvalidValue]) -> None:
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"invalid configuration ({len(errors)} field(s)):\n{lines}")


@dataclass(frozen=True)
class AgentServerArgs:
    """Everything one AgentServer needs, already validated."""

    server_name: str
    agent_name: str
    region: str
    size: str
    image: str
    engine_ws_url: str
    agent_repo_url: str
    agent_repo_ref: str
    github_token: str = field(repr=False)
    ssh_keys: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    vpc_uuid: str | None = None
    monitoring: bool = False
    replace_on_boot_script_change: bool = False
    boot_report_url: str = ""  # empty: the boot script reports nothing


@dataclass(frozen=True)
class StackSettings:
    args: AgentServerArgs
    database_url: str = field(repr=False)
    do_token: str = field(repr=False)
    do_api_endpoint: str | None = None


@functools.cache
def project_defaults() -> Mapping[str, Any]:
    """The `default` of each config key declared in Pulumi.yaml: the one place defaults live."""
    declared = yaml.safe_load(PROJECT_FILE.read_text()).get("config", {})
    return {key: spec["default"] for key, spec in declared.items() if "default" in spec}


def load(
    get: Callable[[str], str | None],
    *,
    stack: str,
    get_provider: Callable[[str], str | None] = lambda _key: None,
    environ: Mapping[str, str] = os.environ,
) -> StackSettings:
    """Reads and validates the stack's config.

    `get` returns the raw string of a project config key (pulumi.Config().get), `get_provider`
    the same for `digitalocean:` keys. Raises InvalidConfig naming every bad field.
    """
    defaults = project_defaults()
    errors: list[InvalidValue] = []

    def raw(key: str) -> Any:
        value = get(key)
        if value in (None, "") and key in ENV_FALLBACKS:
            value = environ.get(ENV_FALLBACKS[key])
        if value in (None, ""):
            value = defaults.get(key)
        return value

    def check(key: str, rule: Callable[[Any, str], Any], *, parse_json: bool = False) -> Any:
        value = raw(key)
        try:
            if parse_json and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise InvalidValue(key, "must be a YAML/JSON list") from None
            return rule(value, key)
        except InvalidValue as exc:
            errors.append(exc)
            return None

    def optional(rule: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
        return lambda value, key: None if value in (None, "") else rule(value, key)

    if raw("serverName"):
        server_name = check("serverName", validation.server_name)
    else:
        server_name = _check_stack_name(stack, errors)
    agent_name = check("agentName", validation.agent_name) if raw("agentName") else None
    args = dict(
        server_name=server_name,
        agent_name=agent_name or f"agent-{server_name}",
        region=check("region", validation.region),
        size=check("size", validation.size),
        image=check("image", validation.image),
        engine_ws_url=check("engineWsUrl", validation.engine_ws_url),
        agent_repo_url=check("agentRepoUrl", validation.repo_url),
        agent_repo_ref=check("agentRepoRef", validation.git_ref),
        github_token=check("githubToken", validation.github_token),
        ssh_keys=check("sshKeys", validation.ssh_keys, parse_json=True),
        tags=check("tags", validation.tags, parse_json=True),
        vpc_uuid=check("vpcUuid", optional(validation.vpc_uuid)),
        monitoring=check("monitoring", validation.boolean),
        replace_on_boot_script_change=check("replaceOnBootScriptChange", validation.boolean),
        boot_report_url=check("bootReportUrl", optional(validation.boot_report_url)) or "",
    )
    database_url = check("databaseUrl", _database_url)
    do_token = get_provider("token") or next(
        (environ[name] for name in DO_TOKEN_ENV if environ.get(name)), None
    )
    if not do_token:
        errors.append(
            InvalidValue(
                "digitalocean:token",
                "is required: `pulumi config set --secret digitalocean:token ...` "
                "or export DIGITALOCEAN_TOKEN (or the old DO_API_TOKEN)",
            )
        )
    if errors:
        raise InvalidConfig(errors)
    return StackSettings(
        args=AgentServerArgs(**args),
        database_url=database_url,
        do_token=do_token,  # type: ignore[arg-type]
        do_api_endpoint=get_provider("apiEndpoint"),
    )


def _check_stack_name(stack: str, errors: list[InvalidValue]) -> str | None:
    try:
        return validation.server_name(stack, "serverName")
    except InvalidValue as exc:
        errors.append(
            InvalidValue(
                "serverName",
                f"is not set and the stack name {stack!r} is not a valid server name "
                f"({exc.rule}); set serverName",
            )
        )
        return None


def _database_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(
            key,
            "is required: `pulumi config set --secret databaseUrl postgresql://...` "
            "or export DATABASE_URL",
        )
    check_conninfo(value, key)
    return value
