"""A stand-in for the `pulumi` CLI, the true boundary below the Automation API.

The Automation API does its work by running `pulumi` with arguments and environment variables.
This script records each call (arguments, working directory, the environment variables that
matter) in `$FAKE_PULUMI_DIR/calls.jsonl` and answers just enough for `up` and `destroy` to
complete: `version`, `stack select|init|output|history|rm`, `config set-all|rm-all`, `up`,
`destroy`, `preview`, `refresh --preview-only`, `plugin install resource <name> v<version>`.
It runs no program, creates nothing and downloads nothing: it shows what citrus hands the CLI,
not what Pulumi does with it (tests/service/test_live_automation.py runs the real CLI). Any
other command, and any flag of `up`, `destroy`, `preview` or `refresh` it does not know, exits
2, so a new call from a newer Automation API fails the test instead of passing unseen.

It reports a current version, so the Automation API takes its path for current CLIs: engine
events come over gRPC, not through a file (see send_events).

`FAKE_PULUMI_FAIL=up:locked` makes `up` fail as a locked file:// backend does;
`FAKE_PULUMI_FAIL=plugin:offline` makes `plugin install` fail as on a machine without network.

`preview` and `refresh --preview-only` answer with the engine events the real CLI sends for
them (pkg/engine: a `resourcePreEvent` and a `resOutputsEvent` per step, `planning` set, then
the summary): `up` keeps a small model of the stack's resources (the droplet, the two rows)
built from its config; `preview` diffs the config against it, and `refresh --preview-only`
reads it against `$FAKE_PULUMI_DIR/cloud.json` (`{"<type>": null}` = deleted, `{"<type>":
{"key": value}}` = changed behind our back). As the real engine with our providers: the
DigitalOcean provider names its changed keys (`diffs`, `detailedDiff`), the dynamic provider
host names none; the refresh's op is the read's result (update/delete/same), its `resourcePre`
op "refresh"; secrets show as "[secret]". Neither writes the stack's state or takes a lock
(the DIY backend's preview-only refresh takes none).
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
    "preview": {"--exec-kind": True, "--event-log": True},
    "refresh": {"--preview-only": False, "--exec-kind": True, "--event-log": True},
}
DROPLET = "digitalocean:index/droplet:Droplet"
SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"
AGENT_ROW = "pulumi-python:dynamic/citrus:AgentRow"
DROPLET_FORCE_NEW = {"region", "image"}
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
    elif argv[:1] in (["preview"], ["refresh"]):
        flags = operation_flags(argv)
        if flags is None:
            return 2
        if argv[0] == "refresh" and "--preview-only" not in flags:
            print("fake pulumi: only `refresh --preview-only` is answered", file=sys.stderr)
            return 2
        return read_only(argv[0], flags, str(stack), stacks)
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
        stacks[stack]["resources"] = model(stack, config)
    else:
        stacks[stack]["outputs"] = {}
        stacks[stack]["resources"] = []
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


def model(stack: str, config: dict[str, str]) -> list[dict[str, Any]]:
    """The stack's resources as an `up` with this config leaves them: inputs and outputs."""
    name = config.get("citrus-deploy:serverName", stack)
    region = config.get("citrus-deploy:region", "sfo3")
    size = config.get("citrus-deploy:size", "s-1vcpu-512mb-10gb")
    prefix = f"urn:pulumi:{stack}::citrus-deploy::citrus:index:AgentServer$"
    droplet = {"name": name, "region": region, "size": size, "image": "ubuntu-24-04-x64"}
    row = {"name": name, "dropletId": "412345678", "region": region, "size": size}
    agent = {"name": f"agent-{name}", "key": "[secret]"}
    return [
        {
            "urn": f"{prefix}{DROPLET}::{name}-droplet",
            "type": DROPLET,
            "id": "412345678",
            "inputs": droplet,
            "outputs": {**droplet, "ipv4Address": "203.0.113.7", "status": "active"},
        },
        {
            "urn": f"{prefix}{AGENT_ROW}::{name}-agent-row",
            "type": AGENT_ROW,
            "id": "agent-id",
            "inputs": agent,
            "outputs": {**agent, "status": "offline", "keySha256": "0" * 64},
        },
        {
            "urn": f"{prefix}{SERVER_ROW}::{name}-server-row",
            "type": SERVER_ROW,
            "id": "1",
            "inputs": row,
            "outputs": {**row, "status": "provisioning"},
        },
    ]


def _state(res: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A StepEventStateMetadata (apitype): inputs and outputs, secrets as "[secret]"."""
    return {
        "type": res["type"],
        "urn": res["urn"],
        "custom": True,
        "id": res["id"],
        "parent": "",
        "provider": "",
        "inputs": res["inputs"],
        "outputs": res["outputs"] if outputs is None else outputs,
    }


def _step_events(op: str, pre_op: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"resourcePreEvent": {"metadata": {**meta, "op": pre_op}, "planning": True}},
        {"resOutputsEvent": {"metadata": {**meta, "op": op}, "planning": True}},
    ]


def _diff_fields(typ: str, keys: list[str]) -> dict[str, Any]:
    """What the provider names: the bridged DigitalOcean provider its changed keys, the
    dynamic provider host nothing (the engine then sends neither field)."""
    if typ != DROPLET or not keys:
        return {}
    kinds = {k: "update-replace" if k in DROPLET_FORCE_NEW else "update" for k in keys}
    detailed = {k: {"diffKind": kind, "inputDiff": False} for k, kind in kinds.items()}
    return {"diffs": keys, "detailedDiff": detailed}


def read_only(kind: str, flags: dict[str, str], stack: str, stacks: dict[str, Any]) -> int:
    """`preview` or `refresh --preview-only`: the events of the steps; nothing is written."""
    old = {res["urn"]: res for res in stacks[stack].get("resources", [])}
    events: list[dict[str, Any]] = [{"preludeEvent": {"config": {}}}]
    counts: dict[str, int] = {}
    if kind == "preview":
        print(f"Previewing update ({stack}):")
        new = {res["urn"]: res for res in model(stack, stacks[stack]["config"])}
        for urn, res in new.items():
            before = old.get(urn)
            meta = {"urn": urn, "type": res["type"], "provider": "", "new": _state(res)}
            if before is None:
                op = "create"
            else:
                keys = sorted(k for k in res["inputs"] if res["inputs"][k] != before["inputs"][k])
                replace = res["type"] == DROPLET and bool(DROPLET_FORCE_NEW & set(keys))
                op = "replace" if replace else "update" if keys else "same"
                meta |= {"old": _state(before), **_diff_fields(res["type"], keys)}
                if replace:
                    meta["keys"] = sorted(DROPLET_FORCE_NEW & set(keys))
            counts[op] = counts.get(op, 0) + 1
            events += _step_events(op, op, meta)
        for urn, res in old.items():
            if urn not in new:
                counts["delete"] = counts.get("delete", 0) + 1
                meta = {"urn": urn, "type": res["type"], "provider": "", "old": _state(res)}
                events += _step_events("delete", "delete", {**meta, "new": None})
    else:
        print(f"Previewing refresh ({stack}):")
        cloud_file = Path(os.environ["FAKE_PULUMI_DIR"]) / "cloud.json"
        cloud = json.loads(cloud_file.read_text()) if cloud_file.exists() else {}
        for urn, res in old.items():
            meta = {"urn": urn, "type": res["type"], "provider": "", "old": _state(res)}
            if res["type"] in cloud and cloud[res["type"]] is None:
                op, meta["new"] = "delete", None
            else:
                read = {**res["outputs"], **cloud.get(res["type"], {})}
                keys = sorted(k for k in res["inputs"] if read.get(k) != res["outputs"].get(k))
                op = "update" if keys else "same"
                meta |= {"new": _state(res, read), **_diff_fields(res["type"], keys)}
            counts[op] = counts.get(op, 0) + 1
            events += _step_events(op, "refresh", meta)
    events.append({"summaryEvent": {"durationSeconds": 1, "resourceChanges": counts}})
    events.append({"cancelEvent": {}})
    if "--event-log" in flags:
        send_events(flags["--event-log"], [{"sequence": i, **e} for i, e in enumerate(events, 1)])
    print("Resources:\n    " + ", ".join(f"{n} to {op}" for op, n in sorted(counts.items())))
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
