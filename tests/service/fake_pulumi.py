"""A stand-in for the `pulumi` CLI, the true boundary below the Automation API.

The Automation API does its work by running `pulumi` with arguments and environment variables.
This script records each call (arguments, working directory, the environment variables that
matter) in `$FAKE_PULUMI_DIR/calls.jsonl` and answers just enough for `up` and `destroy` to
complete: `version`, `stack select|init|output|history|rm`, `config set-all|rm-all`, `up`,
`destroy`, `plugin install resource <name> v<version>`. It runs no program, creates nothing and
downloads nothing: it shows what citrus hands the CLI, not what Pulumi does with it
(tests/service/test_live_automation.py runs the real CLI). Any other command, and any flag of
`up` or `destroy` it does not know, exits 2, so a new call from a newer Automation API fails
the test instead of passing unseen.

It reports a current version, so the Automation API takes its path for current CLIs: engine
events come over gRPC, not through a file (see send_events).

`FAKE_PULUMI_FAIL=up:locked` makes `up` fail as a locked file:// backend does;
`FAKE_PULUMI_FAIL=plugin:offline` makes `plugin install` fail as on a machine without network.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# The version of the `pulumi` package installed with the tests (3.272.0): the Automation API
# of that release streams events over gRPC from any CLI newer than v3.205.0.
VERSION = "v3.272.0"
WATCHED_ENV = (
    "ADMIN_TOKEN",
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_HOME",
    "GITHUB_TOKEN",
    "DATABASE_URL",
    "DIGITALOCEAN_TOKEN",
    "DO_API_TOKEN",
)
SECRET_OUTPUTS = {"agentKeySha256"}
# The flags of `up` and `destroy` the Automation API passes today (True: the flag takes a value).
# A boolean flag is also accepted as `--flag=true|false`, as the CLI's flag parser does.
OPERATION_FLAGS: dict[str, dict[str, bool]] = {
    "up": {"--yes": False, "--skip-preview": False, "--exec-kind": True, "--event-log": True},
    "destroy": {
        "--yes": False,
        "--skip-preview": False,
        "--run-program": False,
        "--exec-kind": True,
        "--event-log": True,
    },
}
PLUGIN_VERSION = re.compile(r"v\d+\.\d+\.\d+\S*")


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
        flags = operation_flags(argv)
        if flags is None:
            return 2
        return operation(argv[0], flags, str(stack), stacks)
    elif argv[:3] == ["plugin", "install", "resource"] and len(argv) == 5:
        return plugin_install(argv[3], argv[4])
    elif command == ["stack", "output"]:
        outputs = stacks[str(stack)]["outputs"]
        if "--show-secrets" not in argv:
            outputs = {k: "[secret]" if k in SECRET_OUTPUTS else v for k, v in outputs.items()}
        print(json.dumps(outputs))
    elif command == ["stack", "export"]:
        # The checkpoint as `pulumi stack export` prints it; FAKE_PULUMI_PENDING (JSON) plays
        # the pending operations a killed update leaves.
        pending = json.loads(os.environ.get("FAKE_PULUMI_PENDING", "[]"))
        deployment = {"manifest": {}, "resources": [], "pending_operations": pending}
        print(json.dumps({"version": 3, "deployment": deployment}))
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


def operation_flags(argv: list[str]) -> dict[str, str] | None:
    """`up`/`destroy` flags -> values ("true" for a bare boolean flag); None for a flag it does
    not know, after the CLI's error. `--stack` is every stack command's, read in main."""
    known = {**OPERATION_FLAGS[argv[0]], "--stack": True}
    flags: dict[str, str] = {}
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=")
        if name not in known:
            print(f"error: unknown flag: {name}", file=sys.stderr)
            return None
        if known[name]:
            flags[name] = value if eq else next(words, "")
        elif value in (("true", "false") if eq else ("",)):
            flags[name] = value or "true"
        else:
            print(f'error: invalid argument "{value}" for "{name}" flag', file=sys.stderr)
            return None
    return flags


def operation(kind: str, flags: dict[str, str], stack: str, stacks: dict[str, Any]) -> int:
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
        {"sequence": 3, "cancelEvent": {}},  # the engine's last event
    ]
    if "--event-log" in flags:
        send_events(flags["--event-log"], events)
    print("Resources:\n    + 7 created")
    return 0


def send_events(target: str, events: list[dict[str, Any]]) -> None:
    """The engine events, as the CLI sends them to `--event-log <target>`.

    `tcp://host:port` (what the Automation API passes to a CLI newer than v3.205.0): the
    Automation API listens there as a gRPC server of the `pulumirpc.Events` service; the CLI
    connects as its client and makes one client-streaming call, `StreamEvents(stream
    EventRequest) returns (google.protobuf.Empty)`, one EventRequest per event whose `event`
    field is the event's JSON, then closes the stream. The call returns once the server has
    handled every event, so they are all delivered before the CLI exits. Any other target is
    a file, one JSON event per line (older CLIs, and the CLI run by hand).
    """
    if not target.startswith("tcp://"):
        with open(target, "a") as log:
            log.writelines(json.dumps(event) + "\n" for event in events)
        return
    import grpc
    from pulumi.runtime.proto import events_pb2, events_pb2_grpc

    with grpc.insecure_channel(target.removeprefix("tcp://")) as channel:
        stub = events_pb2_grpc.EventsStub(channel)
        stub.StreamEvents(
            (events_pb2.EventRequest(event=json.dumps(event)) for event in events), timeout=30
        )


def plugin_install(name: str, version: str) -> int:
    """`plugin install resource <name> v<version>`: recorded (main logs every call), not done."""
    if not PLUGIN_VERSION.fullmatch(version):
        print(f"error: invalid plugin semver: {version}", file=sys.stderr)
        return 255
    label = f"[resource plugin {name}-{version[1:]}]"
    print(f"{label} installing")
    if os.environ.get("FAKE_PULUMI_FAIL") == "plugin:offline":
        url = (
            f"https://get.pulumi.com/releases/plugins/pulumi-resource-{name}-{version}"
            "-linux-amd64.tar.gz"
        )
        print(
            f"error: {label} downloading from : failed to download plugin: {name}-"
            f'{version[1:]}: Get "{url}": dial tcp: lookup get.pulumi.com: no such host',
            file=sys.stderr,
        )
        return 255
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
