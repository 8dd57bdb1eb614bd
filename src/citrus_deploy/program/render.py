"""Renders the root boot script (cloud-init `user_data`) from validated values.

Every value is checked by program.validation and reaches the script through the `shquote` filter;
an unknown template variable is an error (StrictUndefined), never an empty string.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

import jinja2

from citrus_deploy.errors import InvalidValue
from citrus_deploy.program import validation

# DigitalOcean refuses user_data over 64 KiB.
USER_DATA_LIMIT = 64 * 1024

# npm is fetched from the registry (one 2.5 MB tarball, checksum pinned) rather than installed
# from Debian, whose `npm` package pulls ~600 packages at every boot. 10.9.x runs on Debian 12's
# Node.js 18.19.
NPM_VERSION = "10.9.9"
NPM_URL = f"https://registry.npmjs.org/npm/-/npm-{NPM_VERSION}.tgz"
NPM_SHA512 = (
    "d60fba8cb42f688b81e33c2f1cbef2ad7b977166700ec0ad057f1b6d60ea6ef2"
    "524abf673e20c35931cd8305d1dbb8887134d6eefdc0e7b8435bd458bf65b862"
)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("citrus_deploy.program", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # noqa: S701 shell, not HTML: quoting is the shquote filter's job
    keep_trailing_newline=True,
    # A `{% if %}` line leaves no blank line behind: without bootReportUrl the script is the
    # same, byte for byte, as before boot reports existed (tests/golden/user_data.sh).
    trim_blocks=True,
    lstrip_blocks=True,
    # bash uses `{#` itself (`${#array[@]}`), so jinja comments take a longer marker.
    comment_start_string="{##",
    comment_end_string="##}",
)
_ENV.filters["shquote"] = lambda value: shlex.quote(str(value))
TEMPLATE = "user_data.sh.j2"


@dataclass(frozen=True)
class BootValues:
    """What the boot script needs; the key and the token are secrets."""

    agent_id: str
    agent_key: str
    engine_ws_url: str
    repo_url: str
    repo_ref: str
    github_token: str
    # The service's base URL; empty: the script reports nothing (and is unchanged).
    boot_report_url: str = ""

    def __repr__(self) -> str:  # keep secrets out of tracebacks and logs
        return (
            f"BootValues(agent_id={self.agent_id!r}, engine_ws_url={self.engine_ws_url!r}, "
            f"repo_url={self.repo_url!r}, repo_ref={self.repo_ref!r}, "
            f"boot_report_url={self.boot_report_url!r}, <secrets hidden>)"
        )


def render(values: BootValues) -> str:
    """The user_data script for these values; raises InvalidValue naming the bad field."""
    context = {
        "agent_id": validation.agent_id(values.agent_id),
        "agent_key": validation.agent_key(values.agent_key),
        "engine_ws_url": validation.engine_ws_url(values.engine_ws_url),
        "repo_url": validation.repo_url(values.repo_url),
        "repo_ref": validation.git_ref(values.repo_ref),
        "github_token": validation.github_token(values.github_token),
        "boot_report_endpoint": boot_report_endpoint(values.boot_report_url, values.agent_id),
        "npm_version": NPM_VERSION,
        "npm_url": NPM_URL,
        "npm_sha512": NPM_SHA512,
    }
    script = _ENV.get_template(TEMPLATE).render(context)
    size = len(script.encode())
    if size > USER_DATA_LIMIT:
        raise InvalidValue(
            "user_data", f"rendered to {size} bytes; DigitalOcean allows at most {USER_DATA_LIMIT}"
        )
    return script


def boot_report_endpoint(base_url: str, agent_id: str) -> str:
    """Where the script POSTs its reports (web/boot_reports.py); "" when reporting is off."""
    if not base_url:
        return ""
    url = validation.boot_report_url(base_url)
    return f"{url.rstrip('/')}/boot-reports/{validation.agent_id(agent_id)}"


def template_digest() -> str:
    """Short hash of the template source: which boot script a stack was created with."""
    source = _ENV.loader.get_source(_ENV, TEMPLATE)[0]  # type: ignore[union-attr]
    return hashlib.sha256(source.encode()).hexdigest()[:12]
