"""The GitHub Actions pipeline: what its users rely on, read from the workflow files themselves.

Triggers, the apply's single never-cancelled concurrency group, deliberate pruning, one plan
comment found by its marker, secrets only through `env:`, minimal permissions, every `run:`
calling only the project's commands or standard tools; then actionlint (with shellcheck) over
the workflows, and the scripts they call run against a fake `gh`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPTS = ROOT / ".github" / "scripts"
VENV_BIN = Path(sys.executable).parent
NAMES = ("gitops-plan", "gitops-apply", "gitops-drift")
# The program and the package that runs it (src/ holds all of it; pyproject its dependencies).
PROGRAM_PATHS = {"Pulumi.yaml", "__main__.py", "requirements.txt", "pyproject.toml", "src/**"}
MARKER = "<!-- citrus-gitops-plan -->"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for job in workflow["jobs"].values():
        yield from job["steps"]


def step(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in steps(workflow) if s.get("name") == name)


def env_blocks(workflow: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield workflow.get("env") or {}
    for job in workflow["jobs"].values():
        yield job.get("env") or {}
        for s in job["steps"]:
            yield s.get("env") or {}


# --- triggers and concurrency -------------------------------------------------------------


def test_plan_runs_on_pull_requests_touching_the_fleet_or_the_program() -> None:
    on = load("gitops-plan")["on"]
    assert set(on) == {"pull_request"}  # never pull_request_target: PR code never sees secrets
    paths = set(on["pull_request"]["paths"])
    assert "fleet/**" in paths
    assert paths >= PROGRAM_PATHS


def test_apply_runs_on_push_to_main_and_by_hand() -> None:
    workflow = load("gitops-apply")
    on = workflow["on"]
    assert set(on) == {"push", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"]
    assert {"fleet/**"} | PROGRAM_PATHS <= set(on["push"]["paths"])
    # A run by hand on another branch does nothing.
    assert workflow["jobs"]["apply"]["if"] == "${{ github.ref == 'refs/heads/main' }}"


def test_drift_runs_nightly_and_by_hand() -> None:
    on = load("gitops-drift")["on"]
    assert set(on) == {"schedule", "workflow_dispatch"}
    (cron,) = (entry["cron"] for entry in on["schedule"])
    minute, hour, day, month, weekday = cron.split()
    assert (day, month, weekday) == ("*", "*", "*")
    assert minute.isdigit()
    assert hour.isdigit()


def test_apply_is_one_concurrency_group_never_cancelled() -> None:
    workflow = load("gitops-apply")
    assert workflow["concurrency"] == {"group": "gitops-apply", "cancel-in-progress": False}
    # The drift check must not share it: a waiting run of one would replace a waiting apply.
    assert load("gitops-drift")["concurrency"]["group"] != "gitops-apply"
    for job in workflow["jobs"].values():
        assert "concurrency" not in job


def test_pruning_is_never_the_default() -> None:
    env = load("gitops-apply")["jobs"]["apply"]["env"]
    assert env["GITOPS_PRUNE"] == "${{ inputs.prune == true || vars.GITOPS_PRUNE == 'true' }}"
    inputs = load("gitops-apply")["on"]["workflow_dispatch"]["inputs"]
    assert inputs["prune"] == {**inputs["prune"], "type": "boolean", "default": False}


# --- the plan job -------------------------------------------------------------------------


def checkouts(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in steps(workflow) if s.get("uses", "").startswith("actions/checkout@")]


def test_plan_is_made_for_the_merge_result_and_kept() -> None:
    workflow = load("gitops-plan")
    # The merge result, not the head: a branch made before another merge must not show that
    # change undone. It is checked out beside the tooling, and its fleet folder is planned.
    (merged,) = (c for c in checkouts(workflow) if c["with"].get("path"))
    assert merged["with"]["ref"] == "refs/pull/${{ github.event.pull_request.number }}/merge"
    fleet_dir = workflow["jobs"]["plan"]["env"]["FLEET_DIR"]
    assert fleet_dir == f"{merged['with']['path']}/fleet"
    plan = step(workflow, "Plan")
    assert plan["run"] == (
        'citrus-deploy gitops plan "$FLEET_DIR" --json plan.json --markdown plan.md'
    )
    assert "plan.md" in step(workflow, "Job summary")["run"]
    assert "$GITHUB_STEP_SUMMARY" in step(workflow, "Job summary")["run"]
    upload = step(workflow, "Upload the plan")
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert "plan.json" in upload["with"]["path"]


def test_plan_runs_only_the_base_branchs_tooling() -> None:
    """The pull request's tree is data: the tooling installed and run (pip install ., the
    scripts under .github/) is the base branch's, checked out at the top of the workspace."""
    workflow = load("gitops-plan")
    job = workflow["jobs"]["plan"]
    tooling = [c for c in checkouts(workflow) if not c["with"].get("path")]
    assert [c["with"]["ref"] for c in tooling] == ["${{ github.event.pull_request.base.sha }}"]
    (merged,) = (c["with"]["path"] for c in checkouts(workflow) if c["with"].get("path"))
    for s in job["steps"]:
        assert "working-directory" not in s, s
        # Nothing of the merged tree is named by a script, so nothing of it is run: only
        # $FLEET_DIR, as an argument of our own (base) commands.
        assert merged not in s.get("run", ""), s
        for words in commands(s.get("run", "")):
            if "$FLEET_DIR" in words:
                assert words[:2] == ["citrus-deploy", "gitops"], words
    assert "working-directory" not in json.dumps(workflow.get("defaults", {}))


# The one secret the plan may hold: a role that can SELECT server_ownership and nothing else
# (migrations/0020_plan_role.sql). Every other secret is a deploy secret.
PLAN_SECRET = "secrets.GITOPS_PLAN_DATABASE_URL"
SECRET = re.compile(r"secrets\.[A-Z_]+")


def deploy_secrets(job: dict[str, Any]) -> set[str]:
    return set(SECRET.findall(json.dumps(job))) - {PLAN_SECRET}


def unprotected_jobs(workflow: dict[str, Any]) -> list[str]:
    """The jobs that hold a deploy secret outside the protected environment."""
    return [
        name
        for name, job in workflow["jobs"].items()
        if deploy_secrets(job) and job.get("environment") != "fleet"
    ]


def test_the_plan_holds_only_the_read_only_database_url() -> None:
    workflow = load("gitops-plan")
    text = (WORKFLOWS / "gitops-plan.yml").read_text()
    assert set(SECRET.findall(text)) == {PLAN_SECRET}
    assert "secrets.DATABASE_URL" not in text
    for block in env_blocks(workflow):
        if "DATABASE_URL" in block:
            assert block["DATABASE_URL"] == "${{ " + PLAN_SECRET + " }}"


@pytest.mark.parametrize("name", NAMES)
def test_every_job_holding_a_deploy_secret_runs_in_the_protected_environment(name: str) -> None:
    workflow = load(name)
    assert unprotected_jobs(workflow) == []
    if name != "gitops-plan":
        assert all(deploy_secrets(job) for job in workflow["jobs"].values())
    # The check sees a job that lost its environment.
    stripped = json.loads(json.dumps(workflow))
    for job in stripped["jobs"].values():
        job.pop("environment", None)
    expected = [] if name == "gitops-plan" else list(workflow["jobs"])
    assert unprotected_jobs(stripped) == expected


def test_plan_edits_one_comment_found_by_its_marker() -> None:
    workflow = load("gitops-plan")
    comment = step(workflow, "Pull request comment")
    assert comment["run"].startswith("python .github/scripts/pr_comment.py")
    assert '--commit "$HEAD_SHA"' in comment["run"]
    assert comment["env"]["GH_TOKEN"] == "${{ github.token }}"
    # Posted whatever the plan's outcome (a failed plan must replace an older good one), but
    # not for forks, whose token cannot comment.
    assert comment["if"].startswith("${{ !cancelled() &&")
    assert "head.repo.full_name == github.repository" in comment["if"]
    assert workflow["jobs"]["plan"]["permissions"] == {
        "contents": "read",
        "pull-requests": "write",
    }
    assert pr_comment().MARKER == MARKER


def test_forks_are_told_why_there_is_no_plan() -> None:
    workflow = load("gitops-plan")
    job = workflow["jobs"]["plan"]
    assert job["env"]["FORK"] == (
        "${{ github.event.pull_request.head.repo.full_name != github.repository }}"
    )
    names = [s.get("name") for s in job["steps"]]
    assert names.index("Validate") < names.index("Check secrets") < names.index("Plan")
    assert step(workflow, "Check secrets")["run"] == ".github/scripts/require-env.sh DATABASE_URL"


# --- secrets, permissions, pinning, timeouts ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_secrets_reach_steps_only_through_env(name: str) -> None:
    workflow = load(name)
    text = (WORKFLOWS / f"{name}.yml").read_text()
    secret_vars: set[str] = set()
    for block in env_blocks(workflow):
        for var, value in block.items():
            if "secrets." in str(value) or "github.token" in str(value):
                assert re.fullmatch(r"\$\{\{ (secrets\.[A-Z_]+|github\.token) \}\}", value), var
                secret_vars.add(var)
    # Every mention of a secret in the file is one of those env values.
    assert text.count("secrets.") == sum(
        str(v).count("secrets.") for block in env_blocks(workflow) for v in block.values()
    )
    for s in steps(workflow):
        assert "secrets." not in json.dumps(s.get("with", {})), s
        run = s.get("run", "")
        # No expression at all in a script (no injection, no secret on a command line), and
        # no script reads a secret-bearing variable: only our commands do, from their env.
        assert "${{" not in run, s
        for var in secret_vars:
            assert not re.search(rf"\$\{{?{var}\b", run), (var, s)
    if name == "gitops-plan":
        assert secret_vars == {"DATABASE_URL", "GH_TOKEN"}  # the read-only one
    else:
        assert {"DATABASE_URL", "GITHUB_TOKEN", "DIGITALOCEAN_TOKEN"} <= secret_vars
        assert {"PULUMI_CONFIG_PASSPHRASE", "ENGINE_WS_URL"} <= secret_vars


@pytest.mark.parametrize(
    ("name", "command"), [("gitops-apply", "Apply"), ("gitops-drift", "Drift")]
)
def test_apply_and_drift_get_the_notification_webhook(name: str, command: str) -> None:
    env = step(load(name), command)["env"]
    assert env["CITRUS_NOTIFY_URL"] == "${{ secrets.GITOPS_NOTIFY_URL }}"
    assert env["CITRUS_NOTIFY_SECRET"] == "${{ secrets.GITOPS_NOTIFY_SECRET }}"


def test_the_deployers_github_token_is_not_the_runs_token() -> None:
    for name in ("gitops-apply", "gitops-drift"):
        for block in env_blocks(load(name)):
            if "GITHUB_TOKEN" in block:
                assert block["GITHUB_TOKEN"] == "${{ secrets.AGENT_REPO_TOKEN }}"


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_minimal(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {}
    for job_name, job in workflow["jobs"].items():
        allowed = {"contents": "read"}
        if job_name == "plan":
            allowed["pull-requests"] = "write"
        assert job["permissions"] == allowed


PINNED = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+")
USES = re.compile(r"^\s*(?:- )?uses:\s*(.*?)\s*$", re.M)


@pytest.mark.parametrize("name", NAMES)
def test_every_job_has_a_timeout_and_every_action_a_pinned_commit(name: str) -> None:
    workflow = load(name)
    for job in workflow["jobs"].values():
        assert 0 < job["timeout-minutes"] <= 360
    # A tag can be moved to other code; a commit cannot. The comment says which release it is.
    lines = USES.findall((WORKFLOWS / f"{name}.yml").read_text())
    assert len(lines) == sum(1 for s in steps(workflow) if "uses" in s)
    for line in lines:
        assert PINNED.fullmatch(line), line
    for s in steps(workflow):
        if s.get("uses", "").startswith("actions/checkout@"):
            assert s["with"]["persist-credentials"] is False


def test_the_pinning_check_refuses_a_tag() -> None:
    assert not PINNED.fullmatch("actions/checkout@v5")
    assert not PINNED.fullmatch("actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09")
    assert PINNED.fullmatch("actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # v5.1.0")


@pytest.mark.parametrize("name", ["gitops-apply", "gitops-drift"])
def test_the_pulumi_cli_is_pinned_to_the_sdks_version(name: str) -> None:
    (sdk,) = re.findall(r"^pulumi==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    installs = [s for s in steps(load(name)) if s.get("uses", "").startswith("pulumi/actions@")]
    assert installs
    for s in installs:
        assert str(s["with"]["pulumi-version"]) == sdk


# --- what the scripts run -------------------------------------------------------------------

# Standard tools a step may call besides our own commands.
TOOLS = {"echo", "cat", "printf", "tee", "[[", "test", "true", "false", "exit"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "!", "{", "}", "do", "done"}
REDIRECTS = {">", ">>", "<", ">&", "&>", ">>&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*\+?=")


def commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a small bash script: their words, redirections left out."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace = " \t"  # newlines end commands
    lexer.wordchars += "[]$@{}!+:,%^"
    lexer.commenters = "#"
    tokens = list(lexer)
    current: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        operator = token == "\n" or not set(token) - set("();<>|&")
        if token in REDIRECTS:
            i += 1  # the file (or descriptor) it redirects to
        elif operator or (not current and token in KEYWORDS):  # | && ; ( ) ); and the like
            if current:
                yield current
            current = []
        elif not current and ASSIGNMENT.match(token):
            if i + 1 < len(tokens) and tokens[i + 1] == "(":  # an array: skip to its end
                while not tokens[i].startswith(")"):
                    i += 1
                i -= 1  # the ")" ends the command
        else:
            current.append(token)
        i += 1
    if current:
        yield current


def allowed(words: list[str]) -> bool:
    first = words[0]
    if first in TOOLS or first.startswith(("scripts/", ".github/scripts/")):
        return True
    if first == "citrus-deploy":
        return words[1:2] == ["gitops"]
    if first in ("python", ".venv/bin/python"):
        rest = words[1:3]
        return rest in (["-m", "venv"], ["-m", "pip"]) or rest[:1] == [
            ".github/scripts/pr_comment.py"
        ]
    return False


def test_the_command_reader_sees_every_command() -> None:
    script = textwrap.dedent(
        """\
        args=(apply "$X" --plan p)  # a comment
        if [[ -n $Y ]]; then args+=(--prune); fi
        citrus-deploy gitops "${args[@]}" 2>&1 | tee apply.log
        { echo a; cat b; } >> "$OUT"
        curl -s https://example.invalid \\
          -o x
        """
    )
    assert list(commands(script)) == [
        ["[[", "-n", "$Y", "]]"],
        ["citrus-deploy", "gitops", "${args[@]}", "2"],
        ["tee", "apply.log"],
        ["echo", "a"],
        ["cat", "b"],
        ["curl", "-s", "https://example.invalid", "-o", "x"],
    ]


@pytest.mark.parametrize("name", NAMES)
def test_steps_run_only_our_commands_and_standard_tools(name: str) -> None:
    found = []
    for s in steps(load(name)):
        for words in commands(s.get("run", "")):
            assert allowed(words), (s.get("name"), words)
            found.append(words[:3])
    assert ["citrus-deploy", "gitops"] in [words[:2] for words in found]


def run_step(
    tmp_path: Path, workflow: str, name: str, env: dict[str, str], code: int = 0
) -> tuple[int, list[str]]:
    """Runs a step's script as GitHub does (bash -eo pipefail) with a fake `citrus-deploy` on
    PATH that records its arguments; returns the exit code and those arguments."""
    fake = tmp_path / "bin" / "citrus-deploy"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\nexit {code}\n')
    fake.chmod(0o755)
    script = step(load(workflow), name)["run"]
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}", "FLEET_DIR": "fleet", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, (tmp_path / "argv").read_text().splitlines()


APPLY_DEFAULTS = {
    "GITOPS_PRUNE": "false",
    "GITOPS_ALLOW_DESTROY": "",
    "GITOPS_RETRY_FAILED": "false",
    "GITOPS_WORKERS": "",
}


def test_apply_prunes_only_when_chosen(tmp_path: Path) -> None:
    base = [
        "gitops",
        "apply",
        "fleet",
        "--plan",
        "plan.json",
        "--json",
        "apply.json",
    ]
    assert run_step(tmp_path, "gitops-apply", "Apply", APPLY_DEFAULTS) == (0, base)
    chosen = {**APPLY_DEFAULTS, "GITOPS_PRUNE": "true", "GITOPS_ALLOW_DESTROY": "7"}
    chosen |= {"GITOPS_RETRY_FAILED": "true", "GITOPS_WORKERS": "3"}
    extra = ["--prune", "--allow-destroy", "7", "--retry-failed", "--workers", "3"]
    assert run_step(tmp_path, "gitops-apply", "Apply", chosen) == (0, base + extra)


def test_a_failed_apply_fails_the_job_and_keeps_its_table(tmp_path: Path) -> None:
    code, _ = run_step(tmp_path, "gitops-apply", "Apply", APPLY_DEFAULTS, code=1)
    assert code == 1  # through `| tee apply.log`
    assert (tmp_path / "apply.log").exists()
    summary = step(load("gitops-apply"), "Job summary")
    assert summary["if"] == "${{ !cancelled() && hashFiles('apply.log') != '' }}"


def test_drift_fails_the_job_when_a_server_drifted(tmp_path: Path) -> None:
    assert run_step(tmp_path, "gitops-drift", "Drift", {"GITOPS_WORKERS": ""}, code=1) == (
        1,
        ["gitops", "drift", "fleet"],
    )
    code, argv = run_step(tmp_path, "gitops-drift", "Drift", {"GITOPS_WORKERS": "2"})
    assert (code, argv[-2:]) == (0, ["--workers", "2"])


# --- linters --------------------------------------------------------------------------------


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is missing: pip install -r requirements-dev.txt"
    return found


def test_actionlint_with_shellcheck_is_clean() -> None:
    tool("shellcheck")  # actionlint checks each run: script with it when it is on PATH
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.y*ml"))
    done = subprocess.run(
        [tool("actionlint"), "-oneline", "-no-color", *files],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_is_clean_on_the_scripts() -> None:
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert scripts
    done = subprocess.run(
        [tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


# --- require-env.sh -------------------------------------------------------------------------


def require_env(*names: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "require-env.sh"), *names],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_require_env_passes_quietly_when_every_secret_is_set() -> None:
    done = require_env("DATABASE_URL", "X", DATABASE_URL="postgresql://u:pw@db/x", X="1")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_require_env_names_the_missing_secrets_never_a_value(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    done = require_env(
        "DATABASE_URL",
        "DIGITALOCEAN_TOKEN",
        "X",
        X="dop_v1_value",
        GITHUB_STEP_SUMMARY=str(summary),
    )
    assert done.returncode == 1
    assert done.stdout.startswith(
        "::error title=Missing secrets: DATABASE_URL DIGITALOCEAN_TOKEN::"
    )
    assert "dop_v1_value" not in done.stdout + summary.read_text()
    assert "Settings > Secrets and variables > Actions" in summary.read_text()


def test_require_env_tells_a_fork_why_there_is_no_plan() -> None:
    done = require_env("DATABASE_URL", FORK="true")
    assert done.returncode == 1
    assert "::error title=No plan for a pull request from a fork::" in done.stdout
    assert "The files were validated" in done.stdout


# --- pr_comment.py against a fake gh --------------------------------------------------------

FAKE_GH = '''\
#!/usr/bin/env python3
"""A stand-in for `gh api`: GitHub's REST API is the true boundary of pr_comment.py.

Serves one pull request and its comments from the JSON state file, applies POST and PATCH to
it, and records every call (argv, stdin, whether a token was in the environment)."""
import json, os, re, sys
state_path = os.environ["FAKE_GH_STATE"]
state = json.load(open(state_path))
argv = sys.argv[1:]
data = sys.stdin.read() if "--input" in argv else None
state["calls"].append({"argv": argv, "stdin": data, "token": bool(os.environ.get("GH_TOKEN"))})
method, path = argv[argv.index("--method") + 1], argv[argv.index("--method") + 2]
out = None
if state.get("fail"):
    print("HTTP 403: Resource not accessible by integration", file=sys.stderr)
    json.dump(state, open(state_path, "w"))
    sys.exit(1)
if method == "GET" and re.fullmatch(r"repos/[^/]+/[^/]+/pulls/\\d+", path):
    out = {"head": {"sha": state["head"]}}
elif method == "GET":
    m = re.search(r"per_page=(\\d+)&page=(\\d+)", path)
    size, page = int(m.group(1)), int(m.group(2))
    out = state["comments"][(page - 1) * size : page * size]
elif method == "POST":
    new = {"id": 9000 + len(state["comments"]), "user": {"login": "github-actions[bot]"}}
    new["body"] = json.loads(data)["body"]
    state["comments"].append(new)
    out = new
elif method == "PATCH":
    cid = int(path.rsplit("/", 1)[1])
    (c,) = [c for c in state["comments"] if c["id"] == cid]
    c["body"] = json.loads(data)["body"]
    out = c
json.dump(state, open(state_path, "w"))
print(json.dumps(out))
'''

SHA = "a" * 40
BOT = {"login": "github-actions[bot]"}


def pr_comment() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pr_comment", SCRIPTS / "pr_comment.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeGitHub:
    def __init__(self, tmp_path: Path, comments: list[dict[str, Any]], head: str = SHA) -> None:
        self.dir = tmp_path
        self.state = tmp_path / "gh-state.json"
        self.state.write_text(json.dumps({"head": head, "comments": comments, "calls": []}))
        gh = tmp_path / "bin" / "gh"
        gh.parent.mkdir()
        gh.write_text(FAKE_GH)
        gh.chmod(0o755)
        self.plan = tmp_path / "plan.md"

    def run(self, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(SCRIPTS / "pr_comment.py"), "--pr", "12"]
        argv += ["--commit", SHA, "--plan", str(self.plan), "--artifact", f"gitops-plan-{SHA}"]
        environ = {
            "PATH": f"{self.dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_REPOSITORY": "limedrop/fleet",
            "GITHUB_RUN_ID": "77",
            "GH_TOKEN": "ghs_not-a-real-token",
            "FAKE_GH_STATE": str(self.state),
            **env,
        }
        return subprocess.run(
            [*argv, *extra], env=environ, capture_output=True, text=True, check=False
        )

    @property
    def data(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state.read_text())
        return result

    def writes(self) -> list[list[str]]:
        return [c["argv"][1:4] for c in self.data["calls"] if c["argv"][2] != "GET"]


def test_the_first_plan_creates_the_comment(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [{"id": 1, "user": {"login": "alice"}, "body": "LGTM"}])
    github.plan.write_text("**3 servers**: size s-1 -> s-2\n")
    done = github.run("--outcome", "success")
    assert done.returncode == 0, done.stderr
    assert github.writes() == [["--method", "POST", "repos/limedrop/fleet/issues/12/comments"]]
    body = github.data["comments"][-1]["body"]
    assert body.startswith(MARKER + "\n### GitOps plan for `aaaaaaaaaaaa`")
    assert f"Made for commit `{SHA}` merged into its base branch" in body
    assert "(https://github.com/limedrop/fleet/actions/runs/77)" in body
    assert body.endswith("**3 servers**: size s-1 -> s-2\n")
    # The token travels in the environment only.
    assert all(c["token"] for c in github.data["calls"])
    assert not any("ghs_" in " ".join(c["argv"]) for c in github.data["calls"])


def test_a_new_push_edits_the_same_comment(tmp_path: Path) -> None:
    # 150 comments: the plan comment is on the second page; a human quoting it is left alone.
    comments = [{"id": i, "user": {"login": "bob"}, "body": f"c{i}"} for i in range(1, 121)]
    comments.append({"id": 500, "user": {"login": "bob"}, "body": MARKER + " quoted"})
    comments.append({"id": 501, "user": BOT, "body": "> " + MARKER})
    comments.append({"id": 502, "user": BOT, "body": MARKER + "\nold plan"})
    comments += [{"id": i, "user": {"login": "bob"}, "body": f"c{i}"} for i in range(600, 627)]
    github = FakeGitHub(tmp_path, comments)
    github.plan.write_text("new plan\n")
    assert github.run("--outcome", "success").returncode == 0
    assert github.writes() == [["--method", "PATCH", "repos/limedrop/fleet/issues/comments/502"]]
    by_id = {c["id"]: c["body"] for c in github.data["comments"]}
    assert by_id[502].endswith("new plan\n")
    assert len(by_id) == len(comments)
    assert by_id[500] == MARKER + " quoted"


def test_a_plan_for_an_older_commit_is_not_posted(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [], head="b" * 40)
    github.plan.write_text("stale plan\n")
    done = github.run("--outcome", "success")
    assert done.returncode == 0
    assert github.writes() == []
    assert "is now at bbbb" in done.stdout


def test_no_plan_file_says_no_plan_was_made(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [{"id": 3, "user": BOT, "body": MARKER + "\ngood old plan"}])
    assert github.run("--outcome", "skipped").returncode == 0
    body = github.data["comments"][0]["body"]
    assert "**No plan was made for this commit**" in body
    assert "good old plan" not in body


def test_a_failed_plan_says_so_above_its_errors(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [])
    github.plan.write_text("fleet/Pulumi.web-1.yaml:3: citrus-deploy:size: unknown size\n")
    assert github.run("--outcome", "failure").returncode == 0
    body = github.data["comments"][0]["body"]
    assert "**The plan command did not succeed (failure)**" in body
    assert body.endswith("unknown size\n")


def test_an_oversized_plan_is_cut_to_githubs_limit(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [])
    github.plan.write_text("".join(f"| web-{i} | size | s-1 -> s-2 | é |\n" for i in range(5000)))
    assert github.run("--outcome", "success").returncode == 0
    body = github.data["comments"][0]["body"]
    assert len(body) <= 65_536
    assert body.startswith(MARKER)
    assert re.search(r"\n\n\*Cut here at [\d,]+ of [\d,]+ characters", body)
    assert body.endswith(f"the whole plan is in the artifact `gitops-plan-{SHA}`.*\n")


def test_render_keeps_a_plan_at_the_limit_whole() -> None:
    module = pr_comment()
    short = module.render(commit=SHA, plan="", outcome="success", run_url="u", artifact="a")
    plan = "x" * (module.MAX_CHARS - len(short))
    body = module.render(commit=SHA, plan=plan, outcome="success", run_url="u", artifact="a")
    assert len(body) == module.MAX_CHARS
    assert body.endswith(plan)


def test_a_github_error_fails_the_step_with_its_message(tmp_path: Path) -> None:
    github = FakeGitHub(tmp_path, [])
    state = github.data | {"fail": True}
    github.state.write_text(json.dumps(state))
    done = github.run("--outcome", "success")
    assert done.returncode == 1
    assert "Resource not accessible by integration" in done.stderr
    assert "ghs_" not in done.stderr
