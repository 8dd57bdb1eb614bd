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

from citrus_deploy.errors import InvalidValue
from citrus_deploy.program import render as render_module
from citrus_deploy.program.render import USER_DATA_LIMIT, BootValues, render

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


# -- boot reports (bootReportUrl) ---------------------------------------------------------------

GOLDEN_REPORTING = GOLDEN.with_name("user_data_boot_report.sh")
REPORTING = replace(VALUES, boot_report_url="https://citrus-deploy.example.com/")
WRAPPED = ("cat", "curl", "sha256sum", "tail", "tr")  # every command the report block runs


def test_without_a_boot_report_url_the_script_has_no_report_code() -> None:
    script = render(VALUES)

    assert "report" not in script
    assert "X-Citrus-Signature" not in script


def test_with_a_boot_report_url_matches_its_golden_file() -> None:
    script = render(REPORTING)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_REPORTING.write_text(script)
    assert script == GOLDEN_REPORTING.read_text(), "review, then UPDATE_GOLDEN=1 pytest"


def test_with_a_boot_report_url_it_reports_every_step_and_the_outcome() -> None:
    script = render(REPORTING)
    endpoint = "https://citrus-deploy.example.com/boot-reports/" + VALUES.agent_id

    assert f"\nreadonly REPORT_URL={endpoint}\n" in script
    assert '\nstep() { STEP=$1; log "step: $1"; report step || true; }\n' in script
    assert "\n    report success 0 || true\n" in script
    assert '\n    report failure "$rc" || true\n' in script
    assert "--connect-timeout 2" in script
    assert "--max-time 4" in script
    # The key is assigned once and read by bash only: no command line carries it.
    assert script.count(VALUES.agent_key) == 1
    assert script.count(VALUES.github_token) == 1
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "openssl" in line]


def test_with_a_boot_report_url_it_is_shellcheck_clean_and_parses(tmp_path: Path) -> None:
    path = tmp_path / "user_data.sh"
    path.write_text(render(REPORTING))

    lint = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)

    assert lint.returncode == 0, lint.stdout
    assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://deploy.example.com", "must use https"),
        ("http://8.8.8.8:8000", "must use https"),
        ("https://user:pw@deploy.example.com", "must not carry credentials"),
        ("https://deploy.example.com/#x", "may contain only URL characters"),
        ("https://deploy.example.com/?a=1", "must not have a query string"),
        ("ftp://deploy.example.com", "must start with"),
    ],
)
def test_a_bad_boot_report_url_is_refused(url: str, rule: str) -> None:
    with pytest.raises(InvalidValue, match=rf"bootReportUrl: .*{re.escape(rule)}"):
        render(replace(VALUES, boot_report_url=url))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://10.1.2.3", "http://[fd00::1]:80", "http://localhost"]
)
def test_plain_http_is_allowed_to_loopback_and_private_addresses(url: str) -> None:
    assert f"{url}/boot-reports/" in render(replace(VALUES, boot_report_url=url))


def report_block(script: str) -> str:
    match = re.search(r"^# >>> report.*?$(.*)^# <<< report$", script, re.M | re.S)
    assert match, "the script lost its `# >>> report` / `# <<< report` markers"
    return match.group(0)


def run_report_block(
    tmp_path: Path, values: BootValues, *, after: str, curl: str | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Runs the env and report blocks with bash under `set -euo pipefail`, then `after`.

    Every command they may run is a wrapper that records its argv and environment in
    trace/argv and trace/env; `curl` (unless `curl` is a path to run instead) also keeps each
    body and its arguments, and succeeds.
    """
    trace, bin_dir = tmp_path / "trace", tmp_path / "bin"
    trace.mkdir()
    bin_dir.mkdir()
    for name in WRAPPED:
        real = curl if name == "curl" and curl else _which(name)
        tail = f'exec {real} "$@"\n'
        if name == "curl" and not curl:
            tail = 'n=$(ls "$TRACE" | grep -c "^body") || true\ncat >"$TRACE/body.$n"\n'
            tail += 'printf "%s\\n" "$@" >"$TRACE/args.$n"\n'
        wrapper = bin_dir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            'printf "%s " "$0" "$@" >>"$TRACE/argv"; echo >>"$TRACE/argv"\n'
            'env >>"$TRACE/env"\n' + tail
        )
        wrapper.chmod(0o755)
    script = render(values)
    runner = tmp_path / "run.sh"
    runner.write_text(
        "set -euo pipefail\n"
        f"LOG={shlex.quote(str(tmp_path / 'citrus-init.log'))}\n"
        "UNIT=citrus-agent.service\nSTEP=start\n"
        'log() { printf "%s citrus-init: %s\\n" "$(date -u +%FT%TZ)" "$*" >>"$LOG"; }\n'
        + env_block(script)
        + f"GITHUB_TOKEN={shlex.quote(values.github_token)}\n"
        + report_block(script)
        + "\n"
        + after
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TRACE": str(trace), "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(runner)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return trace, proc


def _which(name: str) -> str:
    for directory in ("/usr/bin", "/bin"):
        if Path(directory, name).exists():
            return f"{directory}/{name}"
    raise AssertionError(f"{name} not found")


def sent_reports(trace: Path) -> list[tuple[dict[str, str], bytes]]:
    """Each report curl was given: its headers and its body bytes, in order."""
    found = []
    for n in range(len(list(trace.glob("body.*")))):
        args = (trace / f"args.{n}").read_text().splitlines()
        headers = dict(args[i + 1].split(": ", 1) for i, arg in enumerate(args) if arg == "-H")
        found.append((headers, (trace / f"body.{n}").read_bytes()))
    return found


def test_reports_are_signed_json_and_the_key_reaches_no_process(tmp_path: Path) -> None:
    from citrus_deploy.web.boot_reports import BootReport, sign

    hostile = 'tab\there "quoted" back\\slash \x01 \x1b[31m é \x7f $(touch pwned)'
    trace, proc = run_report_block(
        tmp_path,
        REPORTING,
        after=(
            'STEP="fetch agent https://github.com/x/y.git at main"\n'
            "report step || true\n"
            f"printf '%s\\n' {shlex.quote(hostile)} >>\"$LOG\"\n"
            "printf 'fatal: The requested URL returned error: 403\\n' >>\"$LOG\"\n"
            "log \"FAILURE: step '$STEP' failed (exit 128)\"\n"
            "report failure 128 || true\n"
        ),
    )

    assert proc.returncode == 0, proc.stderr
    reports = sent_reports(trace)
    assert len(reports) == 3  # start (sent as the block ends), fetch, failure
    parsed = [BootReport.model_validate_json(body) for _, body in reports]
    assert [(r.step, r.event, r.seq) for r in parsed] == [
        ("start", "step", 1),
        ("fetch", "step", 2),
        ("fetch", "failure", 3),
    ]
    assert parsed[1].label == "fetch agent https://github.com/x/y.git at main"
    assert parsed[2].exit == 128
    assert len({r.boot for r in parsed}) == 1
    tail = parsed[2].tail.splitlines()
    assert tail[-3] == 'tab\there "quoted" back\\slash ? ?[31m ?? ? $(touch pwned)'
    assert tail[-2] == "fatal: The requested URL returned error: 403"
    assert "citrus-init: FAILURE: step 'fetch agent https://github.com/x/y.git" in tail[-1]
    assert tail[-1].endswith(" at main' failed (exit 128)")
    for headers, body in reports:
        assert headers["Content-Type"] == "application/json"
        timestamp = headers["X-Citrus-Timestamp"]
        expected = sign(VALUES.agent_key, timestamp, body)
        assert headers["X-Citrus-Signature"] == f"sha256={expected}"
    # No process the block started had the key (or the HMAC pads made from it) in its
    # command line or environment.
    key = bytes.fromhex(VALUES.agent_key).ljust(64, b"\0")
    pads = ["".join(f"\\x{b ^ pad:02x}" for b in key) for pad in (0x36, 0x5C)]
    seen = (trace / "argv").read_text() + (trace / "env").read_text()
    assert set((trace / "argv").read_text().split()) >= {f"{tmp_path}/bin/sha256sum"}
    for secret in (VALUES.agent_key, VALUES.github_token, *pads):
        assert secret not in seen
    assert not (tmp_path / "pwned").exists()


def test_the_key_and_token_are_taken_out_of_a_failure_tail(tmp_path: Path) -> None:
    from citrus_deploy.web.boot_reports import BootReport

    trace, proc = run_report_block(
        tmp_path,
        REPORTING,
        after=(
            f"printf 'oops %s and %s\\n' {VALUES.agent_key} {VALUES.github_token} >>\"$LOG\"\n"
            "report failure 1 || true\n"
        ),
    )

    assert proc.returncode == 0, proc.stderr
    tail = BootReport.model_validate_json(sent_reports(trace)[-1][1]).tail
    assert "oops [redacted] and [redacted]" in tail


def test_an_unreachable_service_costs_the_boot_little_and_never_fails_it(tmp_path: Path) -> None:
    """Port 9 on the loopback refuses at once; after two misses only the outcome is tried."""
    values = replace(VALUES, boot_report_url="http://127.0.0.1:9")
    steps = "".join(f'STEP="step {n}"; report step || true\n' for n in range(5))
    trace, proc = run_report_block(
        tmp_path,
        values,
        after=steps + "report success 0 || true\necho reached\n",
        curl=_which("curl"),
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "reached\n"
    curls = [line for line in (trace / "argv").read_text().splitlines() if "/curl " in line]
    assert len(curls) == 3  # start, step 0: missed; steps 1-4 skipped; success: tried
    log = (tmp_path / "citrus-init.log").read_text()
    assert log.count("boot report not delivered") == 3
