"""The fleet folder reader and `validate`: the program's own rules, line numbers, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from citrus_deploy.gitops.cli import main
from citrus_deploy.gitops.fleet import read_fleet, read_stack_file
from citrus_deploy.gitops.rules import ProgramRules, whole_load_errors
from tests.gitops.conftest import FleetRepo
from tests.paths import REPO

SIZE_RULE = "must be a DigitalOcean size slug such as 's-1vcpu-512mb-10gb'"


def errors_of(repo: FleetRepo) -> list[str]:
    return [str(e) for e in read_fleet(repo.fleet, display="fleet").all_errors()]


def test_a_valid_file_becomes_its_record_config(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "config:\n"
        "  citrus-deploy:size: s-1vcpu-1gb\n"
        "  citrus-deploy:image: 12345\n"
        "  citrus-deploy:tags: [web, eu]\n"
        "  citrus-deploy:monitoring: true\n"
        "  citrus-deploy:agentRepoRef:\n"
        "  digitalocean:apiEndpoint: https://api.digitalocean.com\n"
        "  gitops:adopt: true\n",
    )
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert list(fleet.all_errors()) == []
    stack = fleet.files["web-1"]
    assert stack.path == "fleet/Pulumi.web-1.yaml"
    assert stack.adopt is True
    # Numbers as the CLI passes them; `key:` with no value is unset; gitops:* is not config.
    assert stack.config == {
        "serverName": "web-1",
        "size": "s-1vcpu-1gb",
        "image": "12345",
        "tags": ["web", "eu"],
        "monitoring": True,
        "digitalocean:apiEndpoint": "https://api.digitalocean.com",
    }


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing yet\n", "~\n", "---\n", "--- null\n"])
def test_an_empty_file_is_an_error_not_a_server_with_the_defaults(
    fleet_repo: FleetRepo, text: str
) -> None:
    """Issue 17: an empty file (a bad merge, a truncated write) planned a new server with the
    defaults, or replaced an existing one; `config: {}` says "every default" on purpose."""
    fleet_repo.write_text("Pulumi.db-1.yaml", text)
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert [str(e) for e in fleet.all_errors()] == [
        "fleet/Pulumi.db-1.yaml: is empty: a fleet file holds `config:` with the server's keys "
        "(`config: {}` for a server with every default)"
    ]
    assert fleet.files["db-1"].config == {"serverName": "db-1"}


def test_config_with_no_keys_is_a_server_with_the_defaults(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("Pulumi.db-1.yaml", "config: {}\n")
    fleet_repo.write_text("Pulumi.db-2.yaml", "config:\n")
    fleet = read_fleet(fleet_repo.fleet)
    assert list(fleet.all_errors()) == []
    assert fleet.files["db-1"].config == {"serverName": "db-1"}
    assert fleet.files["db-2"].config == {"serverName": "db-2"}


def test_errors_name_the_file_and_line_of_the_key(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "config:\n"
        "  citrus-deploy:region: sfo3\n"
        "\n"
        "  citrus-deploy:size: BIG\n"
        "  citrus-deploy:tags:\n"
        "    - web\n"
        "    - has space\n",
    )
    assert errors_of(fleet_repo) == [
        f"fleet/Pulumi.web-1.yaml:4: citrus-deploy:size: {SIZE_RULE}",
        "fleet/Pulumi.web-1.yaml:7: citrus-deploy:tags[1]: "
        "must be 1-255 letters, digits, '_', ':' or '-'",
    ]


def test_the_programs_own_rules_apply(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("a", region="sfo", agentRepoUrl="http://example.com/x.git")
    fleet_repo.write("b", monitoring="maybe", vpcUuid="not-a-uuid", sshKeys="oops")
    fleet_repo.write("c_d")  # not a hostname: the file name is the server name
    errors = errors_of(fleet_repo)
    assert errors == [
        "fleet/Pulumi.a.yaml:2: citrus-deploy:agentRepoUrl: "
        "must use https (the token travels with the request)",
        "fleet/Pulumi.a.yaml:3: citrus-deploy:region: "
        "must be a DigitalOcean region slug such as 'sfo3'",
        "fleet/Pulumi.b.yaml:2: citrus-deploy:monitoring: must be true or false",
        "fleet/Pulumi.b.yaml:3: citrus-deploy:sshKeys: must be a YAML/JSON list",
        "fleet/Pulumi.b.yaml:4: citrus-deploy:vpcUuid: must be a UUID",
        "fleet/Pulumi.c_d.yaml: the file name is the server name, which must be a hostname: "
        "letters, digits, '-' and '.', each dot-separated part starting and ending with a "
        "letter or digit",
    ]


def test_unknown_keys_are_errors(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "config:\n  size: s-1vcpu-1gb\n  citrus-deploy:colour: red\n  aws:region: us-east-1\n",
    )
    assert errors_of(fleet_repo) == [
        "fleet/Pulumi.web-1.yaml:2: size: unknown key; did you mean citrus-deploy:size?",
        "fleet/Pulumi.web-1.yaml:3: citrus-deploy:colour: unknown key",
        "fleet/Pulumi.web-1.yaml:4: aws:region: unknown key",
    ]


def test_server_name_must_equal_the_file_name(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web-1", serverName="web-2")
    fleet_repo.write("web-3", serverName="web-3")
    assert errors_of(fleet_repo) == [
        "fleet/Pulumi.web-1.yaml:2: citrus-deploy:serverName: "
        "must equal the file's name ('web-1'): the file name is the server name"
    ]


def test_names_are_unique_regardless_of_case(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web")
    fleet_repo.write("WEB")
    rule = (
        "server names are unique regardless of case: Pulumi.WEB.yaml, Pulumi.web.yaml "
        "name the same server"
    )
    assert errors_of(fleet_repo) == [
        f"fleet/Pulumi.WEB.yaml: {rule}",
        f"fleet/Pulumi.web.yaml: {rule}",
    ]


def test_other_yaml_files_are_errors_and_other_files_ignored(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("web-1.yaml", "config: {}\n")
    fleet_repo.write_text("notes.txt", "anything\n")
    (fleet_repo.fleet / "sub").mkdir()
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert [str(e) for e in fleet.all_errors()] == [
        "fleet/web-1.yaml: not a stack file: a fleet file is named Pulumi.<server name>.yaml"
    ]
    assert fleet.files == {}


def test_broken_yaml_names_the_line(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("Pulumi.web-1.yaml", "config:\n  citrus-deploy:size: [\n")
    (error,) = errors_of(fleet_repo)
    assert error.startswith("fleet/Pulumi.web-1.yaml:3: not valid YAML: ")


def test_top_level_keys_other_than_config_are_errors(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "secretsprovider: awskms://alias/x\nencryptedkey: AAAA\nconfig: {}\nenvironment: [x]\n",
    )
    why = (
        "a fleet file has no secrets provider or key: the fleet's secrets come from the "
        "pipeline's secret store; remove it"
    )
    assert errors_of(fleet_repo) == [
        f"fleet/Pulumi.web-1.yaml:1: secretsprovider: {why}",
        f"fleet/Pulumi.web-1.yaml:2: encryptedkey: {why}",
        "fleet/Pulumi.web-1.yaml:4: environment: unknown top-level key: a fleet file holds "
        "only `config:`",
    ]


SECRETS = {
    "do_token": "dop_v1_0123456789abcdef0123456789abcdef",
    "gh_token": "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "pat": "github_pat_11ABCDEFG_0123456789abcdef",
    "password": "hunter2-correct-horse",
    "cipher": "v1:AAAABBBBCCCCsecretcipher",
}


def test_secrets_are_refused_without_echoing_them(
    fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "config:\n"
        f"  citrus-deploy:githubToken: {SECRETS['gh_token']}\n"
        f"  digitalocean:token: {SECRETS['do_token']}\n"
        f"  citrus-deploy:databaseUrl: postgresql://u:{SECRETS['password']}@db/x\n"
        f"  citrus-deploy:agentRepoUrl: https://x:{SECRETS['password']}@github.com/o/r.git\n"
        f"  citrus-deploy:tags: [web, {SECRETS['pat']}]\n"
        f"  citrus-deploy:agentRepoRef: {SECRETS['do_token']}\n"
        "  citrus-deploy:engineWsUrl:\n"
        f"    secure: {SECRETS['cipher']}\n",
    )
    secret = "secrets come from the pipeline's secret store, never from a fleet file"
    looks = "looks like a credential"
    assert errors_of(fleet_repo) == [
        f"fleet/Pulumi.web-1.yaml:2: citrus-deploy:githubToken: is a secret: {secret}",
        f"fleet/Pulumi.web-1.yaml:3: digitalocean:token: is a secret: {secret}",
        f"fleet/Pulumi.web-1.yaml:4: citrus-deploy:databaseUrl: is a secret: {secret}",
        f"fleet/Pulumi.web-1.yaml:5: citrus-deploy:agentRepoUrl: {looks} "
        f"(a URL with a password, value not shown): {secret}",
        f"fleet/Pulumi.web-1.yaml:6: citrus-deploy:tags: {looks} "
        f"(a DigitalOcean or GitHub token, value not shown): {secret}",
        f"fleet/Pulumi.web-1.yaml:7: citrus-deploy:agentRepoRef: {looks} "
        f"(a DigitalOcean or GitHub token, value not shown): {secret}",
        f"fleet/Pulumi.web-1.yaml:8: citrus-deploy:engineWsUrl: holds an encrypted secret "
        f"(secure:): {secret}",
    ]
    assert main(["validate", str(fleet_repo.fleet)]) == 1
    printed = capsys.readouterr()
    for value in SECRETS.values():
        assert value not in printed.out + printed.err


def test_validate_prints_each_error_and_fails(
    fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)  # validate needs no database
    fleet_repo.write("web-1", size="BIG")
    fleet_repo.write("web-2", size="s-1vcpu-1gb")
    monkeypatch.chdir(fleet_repo.root)
    assert main(["validate", "fleet/"]) == 1
    out = capsys.readouterr()
    assert out.out == f"fleet/Pulumi.web-1.yaml:2: citrus-deploy:size: {SIZE_RULE}\n"
    assert "1 error(s) in fleet" in out.err


def test_validate_ok_says_how_many_files(
    fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.write("web-2")
    monkeypatch.chdir(fleet_repo.root)
    assert main(["validate", "fleet"]) == 0
    assert capsys.readouterr().out == "OK: 2 stack file(s) in fleet\n"


def test_validate_of_a_missing_folder_is_a_usage_error(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "/nonexistent/fleet"]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "record",
    [
        {"serverName": "web-1"},
        {"serverName": "web-1", "size": "BIG", "region": "x", "tags": ["a b", "c"]},
        {"serverName": "web_1", "agentName": "-bad-", "monitoring": "maybe", "sshKeys": "[1]"},
        {"serverName": "web-1", "engineWsUrl": "http://x", "agentRepoUrl": "https://h/o/r"},
        {"serverName": "w", "vpcUuid": "x", "image": "Bad!", "agentRepoRef": "a..b"},
        {"serverName": "w", "tags": ["a", "a"], "sshKeys": ["zz"], "replaceOnBootScriptChange": 3},
        {"serverName": "w", "monitoring": True, "tags": [], "digitalocean:apiEndpoint": "x"},
    ],
)
def test_per_field_rules_equal_the_programs_whole_load(record: dict[str, object]) -> None:
    """ProgramRules checks field by field (remembered); the program checks the whole file."""
    name = str(record["serverName"])
    rules = ProgramRules()
    for _ in range(2):  # the second time from memory
        assert sorted(rules.errors(record, name, set())) == sorted(whole_load_errors(record, name))


def test_several_processes_read_a_fleet_as_one_does(fleet_repo: FleetRepo) -> None:
    """`plan`/`validate` read a big fleet with one process per CPU; nothing may differ."""
    for i in range(60):
        size = "BIG" if i % 7 == 0 else "s-1vcpu-1gb"
        fleet_repo.write_text(
            f"Pulumi.web-{i}.yaml", f"config:\n  citrus-deploy:size: {size}\n  bad:key: x\n"
        )
    fleet_repo.write_text("Pulumi.WEB-1.yaml", "config: {}\n")
    fleet_repo.write_text("stray.yml", "config: {}\n")
    one = read_fleet(fleet_repo.fleet, display="fleet", jobs=1)
    three = read_fleet(fleet_repo.fleet, display="fleet", jobs=3)
    assert three == one
    assert list(three.files) == list(one.files)
    assert len(list(one.all_errors())) == 60 + 9 + 2 + 1  # unknown keys, sizes, case, stray


# -- files that must be refused (issue 17): YAML a stack file never needs --------------------------

ANCHORS = (
    "YAML anchors and aliases (&name, *name) are not allowed in a fleet file: write each value out"
)
TAGS = "are not allowed in a fleet file: write a plain value, quoted if need be"


def laughs(levels: int, width: int) -> str:
    """A "billion laughs" file: each level lists the one before `width` times."""
    lines = [f"l0: &l0 [{', '.join(['ha'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"config:\n  citrus-deploy:tags: *l{levels - 1}")
    return "\n".join(lines) + "\n"


REFUSED_YAML = {
    "a key twice": (
        "config:\n  citrus-deploy:size: s-1vcpu-1gb\n  citrus-deploy:size: s-2vcpu-4gb\n",
        "3: citrus-deploy:size: given more than once (first on line 2): a key may appear once",
    ),
    "a second config block": (  # it hid `gitops:adopt: true`
        "config:\n  gitops:adopt: true\nconfig:\n  citrus-deploy:size: s-1vcpu-1gb\n",
        "3: config: given more than once (first on line 1): a key may appear once",
    ),
    "a key twice, nested": (
        "config:\n  citrus-deploy:engineWsUrl:\n    secure: a\n    secure: b\n",
        "4: secure: given more than once (first on line 3): a key may appear once",
    ),
    "a merge key with an alias": (
        "base: &b\n  citrus-deploy:size: s-1vcpu-1gb\nconfig:\n  <<: *b\n",
        f"1: base: {ANCHORS} (and 1 more like it in this file)",
    ),
    "a merge key, inline": (
        "config:\n  <<: {citrus-deploy:size: s-1vcpu-1gb}\n",
        "2: <<: `<<` merge keys are not allowed in a fleet file: write every key out",
    ),
    "an anchor alone": (
        "config:\n  citrus-deploy:size: &s s-1vcpu-1gb\n",
        f"2: citrus-deploy:size: {ANCHORS}",
    ),
    # Small here: the big one runs in a child with its memory capped (below).
    "billion laughs": (laughs(4, 4), f"1: l0: {ANCHORS} (and 16 more like it in this file)"),
    "an unquoted date": (
        "config:\n  citrus-deploy:agentRepoRef: 2024-01-01\n",
        "2: citrus-deploy:agentRepoRef: an unquoted date or time: quote it (a fleet file holds "
        "strings, not dates)",
    ),
    "an unquoted time": (
        "config:\n  citrus-deploy:agentRepoRef: 2024-01-01 10:00:00\n",
        "2: citrus-deploy:agentRepoRef: an unquoted date or time: quote it (a fleet file holds "
        "strings, not dates)",
    ),
    "!!binary": (
        "config:\n  citrus-deploy:agentRepoRef: !!binary aGVsbG8=\n",
        f"2: citrus-deploy:agentRepoRef: YAML tags (!!binary) {TAGS}",
    ),
    "!!set": (
        "config:\n  citrus-deploy:tags: !!set {a, b}\n",
        f"2: citrus-deploy:tags: YAML tags (!!set) {TAGS}",
    ),
    "!!omap": (
        "config:\n  citrus-deploy:tags: !!omap [a: 1]\n",
        f"2: citrus-deploy:tags: YAML tags (!!omap) {TAGS}",
    ),
    "!!python/object": (
        "config:\n  citrus-deploy:size: !!python/object:os.system x\n",
        f"2: citrus-deploy:size: YAML tags (!!python/object:os.system) {TAGS}",
    ),
    "a local tag": (
        "config:\n  citrus-deploy:size: !big x\n",
        f"2: citrus-deploy:size: YAML tags (a custom tag) {TAGS}",
    ),
    "!!int that is not one": (
        "config:\n  citrus-deploy:image: !!int abc\n",
        f"2: citrus-deploy:image: YAML tags (!!int) {TAGS}",
    ),
    "a tag on a key": (
        "config:\n  !!str citrus-deploy:size: x\n",
        f"2: citrus-deploy:size: YAML tags (!!str) {TAGS}",
    ),
    "a number as a key": ("config:\n  1: x\n", "2: 1: a key must be a string: quote it"),
    "a list as a key": ("config:\n  ? [a, b]\n  : x\n", "2: config: a key must be a string"),
    "nested too deep": (
        "config:\n  citrus-deploy:tags: [[[[[x]]]]]\n",
        "2: citrus-deploy:tags: nested deeper than 5 levels: a fleet file is a few keys under "
        "`config:`",
    ),
    "a plain =": (
        "config:\n  citrus-deploy:size: =\n",
        "2: citrus-deploy:size: a plain `=` is YAML's value key: quote it",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("text", "error"), list(REFUSED_YAML.values()), ids=list(REFUSED_YAML))
def test_yaml_a_stack_file_never_needs_is_refused_with_its_line_and_key(
    fleet_repo: FleetRepo, text: str, error: str
) -> None:
    fleet_repo.write_text("Pulumi.web-1.yaml", text)
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert [str(e) for e in fleet.all_errors()] == [f"fleet/Pulumi.web-1.yaml:{error}"]
    # Nothing of the file is kept: the plan makes it an error of web-1, nothing else.
    assert fleet.files["web-1"].config == {"serverName": "web-1"}


def test_several_documents_are_not_valid_yaml(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("Pulumi.web-1.yaml", "config: {}\n---\nconfig: {}\n")
    (error,) = errors_of(fleet_repo)
    assert error.startswith("fleet/Pulumi.web-1.yaml:2: not valid YAML: ")


def test_quoted_yaml_characters_are_plain_values(fleet_repo: FleetRepo) -> None:
    """&, * and ! make the loader read the events for anchors and tags, never refuse text."""
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "# a comment with & and *\nconfig:\n  citrus-deploy:agentRepoRef: 'v1!'\n"
        '  citrus-deploy:tags: ["a&b", "*"]\n  citrus-deploy:agentRepoUrl: "2024-01-01"\n',
    )
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert fleet.files["web-1"].config == {
        "serverName": "web-1",
        "agentRepoRef": "v1!",
        "tags": ["a&b", "*"],
        "agentRepoUrl": "2024-01-01",
    }


def test_a_file_over_64_kib_is_not_read(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("Pulumi.web-1.yaml", "config: {}\n" + "#" * 70_000 + "\n")
    assert errors_of(fleet_repo) == [
        "fleet/Pulumi.web-1.yaml: is larger than 64 KiB: a stack file is a few keys"
    ]


def test_a_file_that_is_not_utf8_is_refused(fleet_repo: FleetRepo) -> None:
    fleet_repo.path("web-1").write_bytes(b"config:\n  citrus-deploy:size: \xff\xfe\n")
    assert errors_of(fleet_repo) == ["fleet/Pulumi.web-1.yaml: is not UTF-8 text (byte 31)"]


def test_validate_of_a_hostile_kib_stays_within_a_second_and_100_mb(tmp_path: Path) -> None:
    """A bound, not a benchmark: the 443-byte version took 45 s and 1.4 GB in `validate`."""
    text = laughs(10, 18)
    assert 900 <= len(text) <= 1024
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "Pulumi.web-1.yaml").write_text(text)
    # The child caps its own address space (a regression then fails, not the machine), times
    # one validate and measures the memory of a second with tracemalloc (getrusage's maxrss
    # would count this forked pytest too).
    child = """
import json, resource, sys, time, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
from citrus_deploy.gitops.cli import main
measured = {}
try:
    started = time.perf_counter()
    measured["code"] = main(["validate", sys.argv[1]])
    measured["seconds"] = time.perf_counter() - started
    tracemalloc.start()
    main(["validate", sys.argv[1]])
    measured["peak_bytes"] = tracemalloc.get_traced_memory()[1]
except MemoryError:
    measured["code"] = "MemoryError"
print(json.dumps(measured), file=sys.stderr)
"""
    done = subprocess.run(
        [sys.executable, "-c", child, str(fleet)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    measured = json.loads(done.stderr.strip().splitlines()[-1])
    assert measured["code"] == 1, measured
    assert "YAML anchors and aliases" in done.stdout
    assert measured["seconds"] < 1.0
    assert measured["peak_bytes"] < 100 * 2**20


# -- entries named like a stack file that are not one ------------------------------------------

NOT_A_FILE = "a stack file must be a regular file in the repository"


def _symlink_out(fleet: Path) -> None:
    outside = fleet.parent.parent / "outside.yaml"  # out of the repository
    outside.write_text("config:\n  citrus-deploy:size: s-1vcpu-1gb\n")
    (fleet / "Pulumi.web-1.yaml").symlink_to(outside)


ENTRIES = {
    "a symlink out of the repository": (_symlink_out, "is a symbolic link"),
    "a symlink to another stack file": (
        lambda f: (f / "Pulumi.web-1.yaml").symlink_to("Pulumi.web-2.yaml"),
        "is a symbolic link",
    ),
    "a symlink loop": (
        lambda f: (f / "Pulumi.web-1.yaml").symlink_to("Pulumi.web-1.yaml"),
        "is a symbolic link",
    ),
    "a dangling symlink": (
        lambda f: (f / "Pulumi.web-1.yaml").symlink_to("/nonexistent/x.yaml"),
        "is a symbolic link",
    ),
    "a directory": (lambda f: (f / "Pulumi.web-1.yaml").mkdir(), "is a directory"),
    "a FIFO": (
        lambda f: os.mkfifo(f / "Pulumi.web-1.yaml"),
        "is not a regular file (a FIFO, socket or device)",
    ),
}


@pytest.mark.parametrize(("make", "why"), list(ENTRIES.values()), ids=list(ENTRIES))
def test_an_entry_named_like_a_stack_file_must_be_a_regular_file(
    fleet_repo: FleetRepo, make: Callable[[Path], Any], why: str
) -> None:
    fleet_repo.write("web-2", size="s-1vcpu-1gb")
    make(fleet_repo.fleet)
    fleet = read_fleet(fleet_repo.fleet, display="fleet")
    assert [str(e) for e in fleet.all_errors()] == [f"fleet/Pulumi.web-1.yaml: {why}: {NOT_A_FILE}"]
    # An error of web-1 (never a missing file, which the plan would take for a destroy).
    assert fleet.files["web-1"].errors
    assert fleet.files["web-1"].config == {"serverName": "web-1"}
    assert not fleet.files["web-2"].errors


def test_the_reader_itself_never_follows_a_symlink_nor_waits_on_a_fifo(tmp_path: Path) -> None:
    """The entry may change between listing the folder and reading it."""
    target = tmp_path / "target.yaml"
    target.write_text("config: {}\n")
    (tmp_path / "link.yaml").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.yaml")
    link = read_stack_file(tmp_path / "link.yaml", "web-1", "fleet/Pulumi.web-1.yaml")
    # A reader that waits on the FIFO is let go after 5 s (and then fails the test), not hung.
    release = threading.Timer(5, lambda: os.close(os.open(tmp_path / "fifo.yaml", os.O_WRONLY)))
    release.start()
    try:
        fifo = read_stack_file(tmp_path / "fifo.yaml", "web-1", "fleet/Pulumi.web-1.yaml")
    finally:
        release.cancel()
    assert [str(e) for e in link.errors] == [
        f"fleet/Pulumi.web-1.yaml: is a symbolic link: {NOT_A_FILE}"
    ]
    assert [str(e) for e in fifo.errors] == [
        f"fleet/Pulumi.web-1.yaml: is not a regular file: {NOT_A_FILE}"
    ]


# -- file names: a strict pattern, and every name printed escaped ------------------------------

NAME_RULE = (
    "not a stack file name: a server name is letters, digits, '.', '_' and '-' "
    "(Pulumi.<server name>.yaml)"
)
NAMES = {
    "a newline and a workflow command": (
        "Pulumi.web\n::error::pwned.yaml",
        "Pulumi.web\\n::error::pwned.yaml",
    ),
    "a carriage return": ("Pulumi.web\r.yaml", "Pulumi.web\\r.yaml"),
    "terminal escapes": ("Pulumi.web\x1b[2J\x1b[31m.yaml", "Pulumi.web\\x1b[2J\\x1b[31m.yaml"),
    "a right-to-left override": ("Pulumi.web\u202e1.yaml", "Pulumi.web\\u202e1.yaml"),
    "a space": ("Pulumi.web 1.yaml", "Pulumi.web 1.yaml"),
    "a byte that is not UTF-8": (os.fsdecode(b"Pulumi.web\xff.yaml"), "Pulumi.web\\xff.yaml"),
}  # fmt: skip


@pytest.mark.parametrize(("filename", "shown"), list(NAMES.values()), ids=list(NAMES))
def test_a_stack_file_name_outside_the_pattern_is_refused_and_printed_escaped(
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    filename: str,
    shown: str,
) -> None:
    (fleet_repo.fleet / filename).write_text("config: {}\n")
    monkeypatch.chdir(fleet_repo.root)
    assert main(["validate", "fleet"]) == 1
    out = capsys.readouterr().out
    assert out == f"fleet/{shown}: {NAME_RULE}\n"
    assert out.isascii()
    assert out[:-1].isprintable()  # one line: no newline, return or escape of the file's


def test_other_yaml_file_names_are_printed_escaped(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("web\n::error::x.yaml", "config: {}\n")
    assert errors_of(fleet_repo) == [
        "fleet/web\\n::error::x.yaml: not a stack file: a fleet file is named "
        "Pulumi.<server name>.yaml"
    ]


def test_keys_are_printed_escaped(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text("Pulumi.web-1.yaml", 'config:\n  "x\\n::error::y\\e[31m": 1\n')
    assert errors_of(fleet_repo) == [
        "fleet/Pulumi.web-1.yaml:2: x\\n::error::y\\x1b[31m: unknown key"
    ]


# -- credentials the secret check missed ------------------------------------------------------

LOOKS = "looks like a credential ({}, value not shown): " + (
    "secrets come from the pipeline's secret store, never from a fleet file"
)
GH = "a DigitalOcean or GitHub token"
QUERY = "a URL with a secret in its query"
PASSWORD = "a URL with a password"
SECRET = "s3cr3tvalue0123456789"
CREDENTIALS = {  # (key, value, what it looks like, the line of the error)
    "?token= in a URL": ("engineWsUrl", f"wss://hub.example/ws?token={SECRET}", QUERY, 2),
    "&access_token= in a URL": ("bootReportUrl", f"https://r.x/?a&access_token={SECRET}", QUERY, 2),
    "?password= in a URL": ("agentRepoUrl", f"https://g.example/o/r?password={SECRET}", QUERY, 2),
    "user:pass@ without a scheme": ("agentRepoRef", f"deploy:{SECRET}@git.example", PASSWORD, 2),
    "user:pass@ in an ssh URL": ("agentRepoUrl", f"ssh://git:{SECRET}@g.example/o/r", PASSWORD, 2),
    "a GitLab token": ("agentRepoRef", f"glpat-{SECRET}", "a GitLab token", 2),
    "a GitLab deploy token": ("agentRepoRef", f"gldt-{SECRET}", "a GitLab token", 2),
    "a GitHub OAuth token": ("agentRepoRef", f"gho_{SECRET}", GH, 2),
    "a GitHub app token": ("agentRepoRef", f"ghs_{SECRET}", GH, 2),
    "a GitHub refresh token": ("agentRepoRef", f"ghr_{SECRET}", GH, 2),
    "a GitHub user token": ("agentRepoRef", f"ghu_{SECRET}", GH, 2),
    "a DigitalOcean OAuth token": ("agentRepoRef", f"doo_v1_{SECRET}", GH, 2),
    "a DigitalOcean refresh token": ("agentRepoRef", f"dor_v1_{SECRET}", GH, 2),
    "a Slack bot token": ("agentRepoRef", f"xoxb-1234-{SECRET}", "a Slack token", 2),
    "a Slack token in a list": ("tags", ["web", f"xoxp-1234-{SECRET}"], "a Slack token", 4),
    "an AWS access key id": ("agentRepoRef", "AKIAS3CR3TVALUE01234", "an AWS access key", 2),
    "a token inside a mapping": ("tags", {"x": f"glpat-{SECRET}"}, "a GitLab token", 2),
}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "what", "line"), list(CREDENTIALS.values()), ids=list(CREDENTIALS)
)
def test_credentials_are_refused_naming_what_they_look_like_never_the_value(
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: object,
    what: str,
    line: int,
) -> None:
    fleet_repo.write("web-1", **{key: value})
    assert errors_of(fleet_repo) == [
        f"fleet/Pulumi.web-1.yaml:{line}: citrus-deploy:{key}: {LOOKS.format(what)}"
    ]
    assert main(["validate", str(fleet_repo.fleet)]) == 1
    printed = capsys.readouterr()
    assert "s3cr3tvalue" not in printed.out + printed.err
    assert "S3CR3TVALUE" not in printed.out + printed.err


def test_a_credential_as_a_key_is_not_echoed(fleet_repo: FleetRepo) -> None:
    fleet_repo.write_text(
        "Pulumi.web-1.yaml",
        "config:\n  ghp_s3cr3tvalue0123456789: 1\n  https://u:s3cr3tvalue@h.example: 2\n",
    )
    assert errors_of(fleet_repo) == [
        "fleet/Pulumi.web-1.yaml:2: [redacted]: unknown key",
        "fleet/Pulumi.web-1.yaml:3: [redacted]@h.example: unknown key",
    ]


def test_plain_values_with_at_signs_and_queries_pass(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web-1", engineWsUrl="wss://hub.example/ws?region=sfo3", tags=["a:b"])
    assert errors_of(fleet_repo) == []
