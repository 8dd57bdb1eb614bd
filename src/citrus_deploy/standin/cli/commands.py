"""The commands the Automation API runs, with the real CLI's flags, outputs and exit codes.

Traced to pulumi/pulumi `pkg/cmd/pulumi/`: `stack/stack_new.go` (init), `stack_select.go`,
`stack_remove.go`, `stack_export.go`, `stack_output.go`, `stack_history.go`,
`config/config.go` (set-all with --plaintext, --secret, --path or --json; rm-all; the listing),
`cancel.go`, and `operations/` (standin.cli.operations). Errors are `error: <text>` on stderr;
flag errors are cobra's (`unknown flag: --x`, exit 1, `SilenceUsage`); a command or flag it
does not know fails, so a call a newer Automation API adds shows up instead of passing unseen.
Every call is recorded (argv, working directory, the environment variables that matter) in
`$FAKE_PULUMI_DIR/calls.jsonl` when that variable is set, for tests that check what citrus
hands the CLI.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citrus_deploy.standin.cli import operations
from citrus_deploy.standin.cli.backend import Backend, passphrase
from citrus_deploy.standin.cli.project import (
    CliError,
    Project,
    StackFile,
    Value,
    find_project,
    full_key,
)
from citrus_deploy.standin.sealing import Crypter
from citrus_deploy.standin.wire import SECRET_SIG, SIG

VERSION = "v3.272.0"  # the CLI of the installed SDK's release (events come over gRPC)
WATCHED_ENV = (
    "ADMIN_TOKEN",
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_HOME",
    "PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER",
    "GITHUB_TOKEN",
    "DATABASE_URL",
    "DIGITALOCEAN_TOKEN",
    "DO_API_TOKEN",
)
PLUGIN_VERSION = re.compile(r"v\d+\.\d+\.\d+\S*")

# flag -> takes a value; "*" repeats
FLAGS: dict[tuple[str, ...], dict[str, bool | str]] = {
    ("version",): {},
    ("stack", "init"): {"--secrets-provider": True, "--no-select": False},
    ("stack", "select"): {"--create": False},
    ("stack", "rm"): {"--yes": False, "--force": False, "--preserve-config": False},
    ("stack", "export"): {"--show-secrets": False},
    ("stack", "output"): {"--json": False, "--show-secrets": False},
    ("stack", "history"): {
        "--json": False,
        "--show-secrets": False,
        "--page-size": True,
        "--page": True,
    },
    ("config", "set-all"): {"--plaintext": "*", "--secret": "*", "--path": False, "--json": True},
    ("config", "rm-all"): {"--path": False},
    ("config",): {"--show-secrets": False, "--json": False},
    ("cancel",): {"--yes": False},
    ("plugin", "install"): {},
    ("up",): {"--yes": False, "--skip-preview": False, "--run-program": False},
    ("preview",): {"--json": False},
    ("destroy",): {"--yes": False, "--skip-preview": False, "--run-program": False},
    ("refresh",): {
        "--yes": False,
        "--skip-preview": False,
        "--preview-only": False,
        "--run-program": False,
    },
}
OPERATION_FLAGS = {"--exec-kind": True, "--event-log": True}
COMMON_FLAGS = {"--stack": True, "--color": True}


def main(argv: list[str]) -> int:
    _record(argv)
    try:
        with operations.default_signals():
            return _dispatch([a for a in argv if a != "--non-interactive"])
    except CliError as exc:
        if str(exc):
            print(f"error: {exc}", file=sys.stderr)
        return exc.code


def _record(argv: list[str]) -> None:
    home = os.environ.get("FAKE_PULUMI_DIR")
    if home:
        env = {name: os.environ.get(name) for name in WATCHED_ENV}
        with (Path(home) / "calls.jsonl").open("a") as log:
            log.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}) + "\n")


def _command(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for size in (2, 1):
        if tuple(words[:size]) in FLAGS:
            return tuple(words[:size]), words[size:]
    shown = words[0] if words else ""
    raise CliError(f'unknown command "{shown}" for "pulumi"')


def parse(rest: list[str], spec: dict[str, bool | str]) -> tuple[list[str], dict[str, Any]]:
    """Cobra's parsing: `--f v` or `--f=v`; a bool flag bare or `=true|false`."""
    positional: list[str] = []
    flags: dict[str, Any] = {}
    words = iter(rest)
    for word in words:
        if word == "--":
            positional.extend(words)
            break
        if not word.startswith("--"):
            positional.append(word)
            continue
        name, eq, value = word.partition("=")
        if name not in spec:
            raise CliError(f"unknown flag: {name}")
        kind = spec[name]
        if kind is False:
            if eq and value not in ("true", "false"):
                raise CliError(
                    f'invalid argument "{value}" for "{name}" flag: strconv.ParseBool: '
                    f'parsing "{value}": invalid syntax'
                )
            flags[name] = value if eq else "true"
            continue
        if not eq:
            value = next(words, None)  # type: ignore[assignment]
            if value is None:
                raise CliError(f"flag needs an argument: {name}")
        if kind == "*":
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = value
    return positional, flags


def _dispatch(words: list[str]) -> int:
    command, rest = _command(words)
    spec = {**COMMON_FLAGS, **FLAGS[command]}
    if command[0] in ("up", "preview", "destroy", "refresh"):
        spec |= OPERATION_FLAGS
    positional, flags = parse(rest, spec)
    if command == ("version",):
        print(VERSION)
        return 0
    if command == ("plugin", "install"):
        return _plugin_install(positional)
    project = find_project(Path.cwd())
    url = os.environ.get("PULUMI_BACKEND_URL") or f"file://{Path.home()}"
    backend = Backend(url, project)
    stack = flags.get("--stack") or (positional[0] if positional else "")
    if not stack:
        raise CliError(
            "no stack selected; please use `pulumi stack select` or `pulumi stack init` to "
            "choose one"
        )
    handler = HANDLERS.get(command)
    if handler is not None:
        return handler(positional, flags, stack, project, backend)
    return operations.run(command[0], flags, stack, project, backend)


# -- stacks -----------------------------------------------------------------------------------


def stack_init(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    provider = flags.get("--secrets-provider") or "passphrase"
    if provider not in ("passphrase", "default"):
        raise CliError(
            f"the pulumi CLI stand-in knows only the passphrase secrets provider, not {provider}"
        )
    if backend.exists(stack):
        raise CliError(f"stack '{backend.qualified(stack)}' already exists")
    stack_file = StackFile.load(project.stack_file(stack))
    try:  # an existing file's salt is kept (NewPromptingPassphraseSecretsManager)
        crypter = (
            Crypter.from_state(passphrase(), stack_file.encryption_salt)
            if stack_file.encryption_salt
            else Crypter.new(passphrase())
        )
    except Exception:
        raise CliError(
            "could not create secrets manager for new stack: incorrect passphrase"
        ) from None
    with backend.locked(stack):
        backend.engine().write_checkpoint(
            stack,
            {
                "manifest": {"time": "", "magic": "", "version": VERSION},
                "secrets_providers": {"type": "passphrase", "state": {"salt": crypter.state()}},
            },
        )
    if stack_file.encryption_salt != crypter.state():
        stack_file.encryption_salt = crypter.state()
        stack_file.save()
    print(f"Created stack '{stack}'", file=sys.stderr)
    if not flags.get("--no-select"):
        backend.select(stack)
    return 0


def stack_select(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)  # writes no stack file: the selection lives in $PULUMI_HOME
    backend.select(stack)
    return 0


def stack_rm(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    if not flags.get("--yes"):
        raise CliError(
            operations.NON_INTERACTIVE.replace(" or --skip-preview or --preview-only", ""), 2
        )
    name = positional[0] if positional else stack
    backend.require(name)
    with backend.locked(name):
        resources = backend.engine().read_checkpoint(name)["resources"]
        left = [r for r in resources if r.get("type") != "pulumi:pulumi:Stack"]
        if left and not flags.get("--force"):
            raise CliError(
                f"'{name}' still has resources; removal rejected. Possible actions:\n"
                f"- Make sure that '{name}' is the stack that you want to destroy\n"
                "- Run `pulumi destroy` to delete the resources, then run `pulumi stack rm`\n"
                "- Run `pulumi stack rm --force` to override this error"
            )
        backend.remove(name)
    if not flags.get("--preserve-config"):
        project.stack_file(name).unlink(missing_ok=True)
    print(f"Stack '{name}' has been removed!")
    return 0


def stack_export(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    engine = backend.engine(passphrase=_maybe_passphrase())
    try:
        deployment = engine.export(stack, show_secrets=bool(flags.get("--show-secrets")))
    except Exception as exc:
        raise CliError(str(exc).removeprefix("error: ")) from None
    deployment.pop("crypter", None)
    print(json.dumps({"version": 3, "deployment": _plaintext(deployment)}, indent=4))
    return 0


def stack_output(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    show = bool(flags.get("--show-secrets"))
    engine = backend.engine(passphrase=_maybe_passphrase() if show else None)
    try:
        deployment = engine.export(stack, show_secrets=show)
    except Exception as exc:
        raise CliError(str(exc).removeprefix("error: ")) from None
    outputs: dict[str, Any] = {}
    for res in deployment["resources"]:
        if res.get("type") == "pulumi:pulumi:Stack":
            outputs = res.get("outputs") or {}
    print(json.dumps({k: _shown(v, show) for k, v in outputs.items()}, indent=2))
    return 0


def stack_history(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    entries = backend.history(stack)
    if flags.get("--page-size"):
        size, page = int(flags["--page-size"]), int(flags.get("--page") or 1)
        entries = entries[(page - 1) * size : page * size]
    print(json.dumps(entries, indent=4))
    return 0


def cancel(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    if not flags.get("--yes"):
        raise CliError("--yes must be passed in to proceed when running in non-interactive mode", 2)
    backend.require(stack)
    backend.cancel(stack)
    print(f"The currently running update for '{stack}' has been canceled!")
    return 0


# -- config -----------------------------------------------------------------------------------


def config_set_all(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    stack_file = StackFile.load(project.stack_file(stack))
    crypter: Crypter | None = None

    def encrypter() -> Crypter:
        nonlocal crypter
        crypter = crypter or backend.secrets_manager(stack, stack_file)
        return crypter

    if "--json" in flags:
        if any(f in flags for f in ("--plaintext", "--secret", "--path")):
            raise CliError(
                "the --json option cannot be used with the --plaintext, --secret or --path options"
            )
        try:
            given = json.loads(flags["--json"])
        except ValueError as exc:
            raise CliError(f"could not parse --json argument: {exc}") from None
        if not isinstance(given, dict):
            raise CliError("could not parse --json argument: json: cannot unmarshal into a map")
        for key, entry in given.items():
            value = entry.get("value") if isinstance(entry, dict) else None
            if value is None:
                raise CliError(f"value for --json object key {key!r} is nil")
            if not isinstance(value, str):
                raise CliError(
                    "could not parse --json argument: json: cannot unmarshal into a string"
                )
            if entry.get("objectValue") is not None:
                if entry.get("secret"):
                    raise CliError(
                        f"could not set --json config for {key!r}: the stand-in does not keep "
                        "secret object values"
                    )
                stored = Value(obj=json.loads(value))
            elif entry.get("secret"):
                stored = Value(secure=encrypter().encrypt_text(value))
            else:
                stored = Value(text=value)
            stack_file.config[full_key(project, key)] = stored
    for kind in ("--plaintext", "--secret"):
        for pair in flags.get(kind, []):
            key, eq, value = pair.partition("=")
            if not eq:
                raise CliError(f"could not parse {pair!r} as a configuration key/value pair")
            stored = (
                Value(secure=encrypter().encrypt_text(value))
                if kind == "--secret"
                else Value(text=value)
            )
            stack_file.config[full_key(project, key)] = stored
    stack_file.save()
    return 0


def config_rm_all(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    stack_file = StackFile.load(project.stack_file(stack))
    for key in positional:
        stack_file.config.pop(full_key(project, key), None)
    stack_file.save()
    return 0


def config_list(
    positional: list[str], flags: dict[str, Any], stack: str, project: Project, backend: Backend
) -> int:
    backend.require(stack)
    stack_file = StackFile.load(project.stack_file(stack))
    crypter = backend.secrets_manager(stack, stack_file)
    show = bool(flags.get("--show-secrets"))
    listed: dict[str, Any] = {}
    for key, value in sorted(stack_file.config.items()):
        if value.secure is not None:
            listed[key] = {
                "secret": True,
                **({"value": crypter.decrypt_text(value.secure)} if show else {}),
            }
        elif value.is_object:
            text = json.dumps(value.obj, separators=(",", ":"))
            listed[key] = {"value": text, "objectValue": value.obj, "secret": False}
        else:
            listed[key] = {"value": value.text, "secret": False}
    print(json.dumps(listed, indent=4))
    return 0


# -- plugins ----------------------------------------------------------------------------------


def _plugin_install(positional: list[str]) -> int:
    """`plugin install resource <name> v<version>`: nothing is downloaded (no network here);
    FAKE_PULUMI_FAIL=plugin:offline answers as the real CLI does on a machine without it."""
    if len(positional) != 3 or positional[0] != "resource":
        raise CliError("the pulumi CLI stand-in installs only `resource <name> v<version>` plugins")
    _kind, name, version = positional
    if not PLUGIN_VERSION.fullmatch(version):
        raise CliError(f"invalid plugin semver: {version}")
    label = f"[resource plugin {name}-{version[1:]}]"
    print(f"{label} installing")
    if os.environ.get("FAKE_PULUMI_FAIL") == "plugin:offline":
        url = (
            f"https://get.pulumi.com/releases/plugins/pulumi-resource-{name}-{version}"
            "-linux-amd64.tar.gz"
        )
        raise CliError(
            f"{label} downloading from : failed to download plugin: {name}-{version[1:]}: "
            f'Get "{url}": dial tcp: lookup get.pulumi.com: no such host'
        )
    return 0


# -- values -----------------------------------------------------------------------------------


def _maybe_passphrase() -> str | None:
    try:
        return passphrase()
    except CliError:
        return None


def _shown(value: Any, show: bool) -> Any:
    if isinstance(value, dict) and value.get(SIG) == SECRET_SIG:
        return _shown(value.get("value"), show) if show else "[secret]"
    if isinstance(value, dict):
        return {k: _shown(v, show) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v, show) for v in value]
    return value


def _plaintext(value: Any) -> Any:
    """`stack export --show-secrets`: each decrypted secret as `plaintext`, its JSON text."""
    if isinstance(value, dict) and value.get(SIG) == SECRET_SIG and "value" in value:
        return {SIG: SECRET_SIG, "plaintext": json.dumps(value["value"])}
    if isinstance(value, dict):
        return {k: _plaintext(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plaintext(v) for v in value]
    return value


Handler = Callable[[list[str], dict[str, Any], str, Project, Backend], int]
HANDLERS: dict[tuple[str, ...], Handler] = {
    ("stack", "init"): stack_init,
    ("stack", "select"): stack_select,
    ("stack", "rm"): stack_rm,
    ("stack", "export"): stack_export,
    ("stack", "output"): stack_output,
    ("stack", "history"): stack_history,
    ("config", "set-all"): config_set_all,
    ("config", "rm-all"): config_rm_all,
    ("config",): config_list,
    ("cancel",): cancel,
}
