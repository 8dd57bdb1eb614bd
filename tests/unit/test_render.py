"""The boot script template: golden file, shellcheck, bash syntax, the .env written byte for byte.

The full boot on a real systemd + cloud-init machine is tests/boot's job; here bash runs only the
script's `.env` block, in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shlex
import string
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from citrus.errors import InvalidValue
from cloud_init import render as render_module
from cloud_init.render import USER_DATA_LIMIT, BootValues, render

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "user_data.sh"
VALUES = BootValues(
    agent_id="0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b",
    agent_key="0123456789abcdef" * 4,
    engine_ws_url="wss://engine.citrushost.io",
    repo_url="https://github.com/limedrop-byte/citrus-agent.git",
    repo_ref="main",
    github_token="ghp_GoldenFileToken",
)


def env_block(script: str) -> str:
    match = re.search(r"^# >>> env.*?$(.*)^# <<< env$", script, re.M | re.S)
    assert match, "the script lost its `# >>> env` / `# <<< env` markers"
    return match.group(1)


def run_env_block(script: str, directory: Path) -> bytes:
    """Runs only the .env block of the rendered script with bash; returns the file it wrote."""
    runner = directory / "run.sh"
    runner.write_text(env_block(script) + '\nwrite_env "$1"\n')
    target = directory / ".env"
    subprocess.run(["bash", str(runner), str(target)], check=True, cwd=directory)
    assert (target.stat().st_mode & 0o777) == 0o600
    return target.read_bytes()


def test_matches_the_golden_file() -> None:
    script = render(VALUES)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), "template changed: review, then UPDATE_GOLDEN=1 pytest"


def test_is_shellcheck_clean_and_parses(tmp_path: Path) -> None:
    path = tmp_path / "user_data.sh"
    path.write_text(render(VALUES))

    lint = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)

    assert lint.returncode == 0, lint.stdout
    assert syntax.returncode == 0, syntax.stderr


def test_the_script_starts_strict_and_never_traces() -> None:
    script = render(VALUES)

    assert script.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in script
    assert not re.search(r"^\s*set -[a-z]*x", script, re.M)


def test_secrets_appear_once_each_in_the_script() -> None:
    """Once where they are assigned: no log line, URL or command argument carries them."""
    script = render(VALUES)

    assert script.count(VALUES.agent_key) == 1
    assert script.count(VALUES.github_token) == 1


def test_env_block_writes_the_three_values(tmp_path: Path) -> None:
    written = run_env_block(render(VALUES), tmp_path)

    assert written == (
        b"AGENT_ID=0b0e0f3c-1d2a-4c8e-9a7b-5c6d7e8f9a0b\n"
        b"AGENT_KEY=" + VALUES.agent_key.encode() + b"\n"
        b"ENGINE_WS_URL=wss://engine.citrushost.io\n"
    )


def test_hostile_values_are_written_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    url = f"wss://h/';touch$IFS{marker};'$(touch$IFS{marker})&&touch$IFS{marker}"
    values = replace(VALUES, engine_ws_url=url)

    written = run_env_block(render(values), tmp_path)

    assert written.decode().splitlines()[2] == f"ENGINE_WS_URL={url}"
    assert not marker.exists()


def test_an_oversized_script_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "USER_DATA_LIMIT", 1000)

    with pytest.raises(InvalidValue, match=r"user_data: rendered to \d+ bytes"):
        render(VALUES)


def test_the_real_script_fits_digitaloceans_limit_with_room() -> None:
    assert len(render(VALUES).encode()) < USER_DATA_LIMIT // 4


# A URL alphabet biased towards what a shell would love to interpret.
HOSTILE = "'$`\\\"();&|<>!*?[]{}~#% \t\n=:/@" + string.ascii_letters + string.digits + "-._"
hostile_urls = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(["ws", "wss", "http", "WS"]),
    st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5})?(:[0-9]{1,5})?", fullmatch=True
    ),
    st.text(alphabet=HOSTILE, max_size=60),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(url=st.one_of(hostile_urls, st.text(max_size=40)))
def test_any_accepted_url_reaches_env_byte_for_byte(url: str, tmp_path: Path) -> None:
    values = replace(VALUES, engine_ws_url=url)
    try:
        script = render(values)
    except InvalidValue as refused:
        assert refused.field == "engineWsUrl"  # noqa: PT017 either branch is the property
        assert refused.rule  # noqa: PT017
        event("refused")
        return
    event("accepted")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    written = run_env_block(script, tmp_path)
    assert written.splitlines()[2] == b"ENGINE_WS_URL=" + url.encode()


refs = st.text(alphabet=string.ascii_letters + string.digits + "._/-;$'`", min_size=1, max_size=30)
tokens = st.text(alphabet=string.ascii_letters + string.digits + "_.-'$ ", min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(ref=refs, token=tokens)
def test_any_accepted_ref_and_token_keep_the_script_parseable(ref: str, token: str) -> None:
    values = replace(VALUES, repo_ref=ref, github_token=token)
    try:
        script = render(values)
    except InvalidValue as refused:
        assert refused.field in ("agentRepoRef", "githubToken")  # noqa: PT017
        return
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert f"\nGITHUB_TOKEN={shlex.quote(token)}\n" in script
