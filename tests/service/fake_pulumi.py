"""A stand-in for the `pulumi` CLI, the true boundary below the Automation API.

The Automation API does its work by running `pulumi` with arguments and environment variables.
This script records each call (arguments, working directory, the environment variables that
matter) in `$FAKE_PULUMI_DIR/calls.jsonl` and answers just enough for `up` and `destroy` to
complete: `version`, `stack select|init|output|history|rm`, `config set-all|rm-all`, `up`,
`destroy`. It runs no program and creates nothing: it shows what citrus hands the CLI, not
what Pulumi does with it (tests/service/test_live_automation.py runs the real CLI). Any other
command exits 2, so a new call from a newer Automation API fails the test instead of passing
unseen.

`FAKE_PULUMI_FAIL=up:locked` makes `up` fail as a locked file:// backend does.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

VERSION = "v3.205.0"  # the newest version whose events come through a file, not gRPC
WATCHED_ENV = (
    "ADMIN_TOKEN",
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "GITHUB_TOKEN",
    "DATABASE_URL",
    "DIGITALOCEAN_TOKEN",
    "DO_API_TOKEN",
)
SECRET_OUTPUTS = {"agentKeySha256"}


def main(argv: list[str]) -> int:
    home = Path(os.environ["FAKE_PULUMI_DIR"])
    with (home / "calls.jsonl").open("a") as log:
        env = {name: os.environ.get(name) for name in WATCHED_ENV}
        log.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}) + "\n")
    state_file = home / "stacks.json"
    stacks: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    stack = argv[argv.index("--stack") + 1] if "--stack" in argv else None
    command = [arg for arg in argv if arg != "--non-interactive"]  # added to every call
    code = answer(command, stack, stacks)
    state_file.write_text(json.dumps(stacks))
    return code


def answer(argv: list[str], stack: str | None, stacks: dict[str, Any]) -> int:
    command = argv[:2]
    if argv[:1] == ["version"]:
        print(VERSION)
    elif command == ["stack", "select"]:
        if stack not in stacks:
            print(f"error: no stack named '{stack}' found", file=sys.stderr)
            return 255
    elif command == ["stack", "init"]:
        stacks[argv[2]] = {"config": {}, "outputs": {}}
    elif command == ["config", "set-all"]:
        for flag, pair in itertools.pairwise(argv):
            if flag in ("--plaintext", "--secret"):
                key, _, value = pair.partition("=")
                stacks[str(stack)]["config"][key] = value
    elif command == ["config", "rm-all"]:
        for key in argv[2:]:
            if not key.startswith("-"):
                stacks[str(stack)]["config"].pop(key, None)
    elif argv[:1] in (["up"], ["destroy"]):
        return operation(argv, str(stack), stacks)
    elif command == ["stack", "output"]:
        outputs = stacks[str(stack)]["outputs"]
        if "--show-secrets" not in argv:
            outputs = {k: "[secret]" if k in SECRET_OUTPUTS else v for k, v in outputs.items()}
        print(json.dumps(outputs))
    elif command == ["stack", "history"]:
        when = "2026-11-27T00:00:00.000Z"
        summary = {"kind": argv[0], "startTime": when, "endTime": when, "message": ""}
        print(json.dumps([{**summary, "environment": {}, "config": {}, "result": "succeeded"}]))
    elif command == ["stack", "rm"]:
        stacks.pop(argv[-1], None)
    else:
        print(f"fake pulumi: unexpected command {argv[:3]}", file=sys.stderr)
        return 2
    return 0


def operation(argv: list[str], stack: str, stacks: dict[str, Any]) -> int:
    kind = argv[0]
    if os.environ.get("FAKE_PULUMI_FAIL") == f"{kind}:locked":
        print(
            f"error: the stack is currently locked by 1 lock(s). Either wait for the other "
            f"process(es) to end or delete the lock file with `pulumi cancel`.\n  "
            f"file:///state/.pulumi/locks/organization/citrus-deploy/{stack}/x.json",
            file=sys.stderr,
        )
        return 255
    print(f"{'Updating' if kind == 'up' else 'Destroying'} ({stack}):")
    config = stacks[stack]["config"]
    if kind == "up":
        stacks[stack]["outputs"] = {
            "serverName": config.get("citrus-deploy:serverName"),
            "dropletId": "412345678",
            "agentKeySha256": "0" * 64,
        }
    else:
        stacks[stack]["outputs"] = {}
    events = [
        {"sequence": 1, "diagnosticEvent": {"severity": "info", "message": "info line\n"}},
        {
            "sequence": 2,
            "summaryEvent": {"durationSeconds": 3, "resourceChanges": {"create": 7}},
        },
        {"sequence": 3, "cancelEvent": {}},  # the CLI's last event: the reader stops there
    ]
    with open(argv[argv.index("--event-log") + 1], "a") as log:
        log.writelines(json.dumps(event) + "\n" for event in events)
    print("Resources:\n    + 7 created")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
