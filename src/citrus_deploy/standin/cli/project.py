"""The project and its stacks' settings files, as the Pulumi CLI reads, types and writes them.

Traced to pulumi/pulumi: the project file is found from the working directory upward
(`sdk/go/common/workspace/paths.go` DetectProjectPathFrom); a stack's file is
`<project dir>/<stackConfigDir>/Pulumi.<stack>.yaml` (ProjectStackPath, `stackConfigDir` joined
under the project directory even when absolute); its fields are `secretsprovider`,
`encryptedkey`, `encryptionsalt`, `config` (`sdk/go/common/workspace/project.go` ProjectStack).
Stack config is checked against the project's declared types before any engine step
(`pkg/workspace/config.go` mergeConfig, validateStackConfigValue; `ValidateConfigValue` and
`InferFullTypeName` in `sdk/go/common/workspace/project.go`): a key missing from the stack takes
its default (a scalar as its text, a list or map as an object), then every explicitly typed key
must hold its type; keys the project does not declare are never checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILES = ("Pulumi.yaml", "Pulumi.yml")


class CliError(Exception):
    """The CLI fails with `error: <message>` on stderr and this exit code
    (`sdk/go/common/util/cmdutil/exit.go`, `pkg/cmd/pulumi/cmd/exit_codes.go`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Project:
    path: Path  # the Pulumi.yaml
    name: str
    main: str
    stack_config_dir: str
    runtime_options: Mapping[str, Any]
    config: Mapping[str, Mapping[str, Any]]  # declared keys, as written (no namespace)

    @property
    def root(self) -> Path:
        return self.path.parent

    def pwd(self) -> Path:
        """The program's directory, where the language host and the plugins run: `main` when
        it is a directory, relative to the project's or absolute (getPwdMain,
        pkg/engine/project.go)."""
        if not self.main:
            return self.root
        main = Path(self.main)
        main = main if main.is_absolute() else self.root / main
        if not main.exists():
            raise CliError(
                f"project 'main' could not be read: stat {main}: no such file or directory"
            )
        return main if main.is_dir() else main.parent

    def stack_file(self, stack: str) -> Path:
        name = f"Pulumi.{stack.split('/')[-1].replace('/', '-')}{self.path.suffix}"
        return Path(os.path.join(self.root, self.stack_config_dir.lstrip("/"), name))

    def virtualenv(self) -> Path | None:
        """The `virtualenv` runtime option, relative to the project's directory
        (resolveVirtualEnvironmentPath, sdk/python/toolchain/pip.go)."""
        venv = self.runtime_options.get("virtualenv")
        if not venv:
            return None
        path = Path(str(venv))
        return path if path.is_absolute() else self.root / path


def find_project(cwd: Path) -> Project:
    for directory in (cwd, *cwd.parents):
        for name in PROJECT_FILES:
            if (directory / name).is_file():
                return load_project(directory / name)
    raise CliError(
        "no Pulumi.yaml project file found (searching upwards from "
        f"{cwd}). If you have not created a project yet, use `pulumi new` to do so"
    )


def load_project(path: Path) -> Project:
    raw = yaml.safe_load(path.read_text()) or {}
    runtime = raw.get("runtime") or {}
    options = runtime.get("options") or {} if isinstance(runtime, dict) else {}
    declared = raw.get("config") or {}
    for key, spec in declared.items():
        _check_declaration(path, key, spec)
    return Project(
        path=path,
        name=str(raw["name"]),
        main=str(raw.get("main") or ""),
        stack_config_dir=str(raw.get("stackConfigDir") or ""),
        runtime_options=options,
        config={k: v if isinstance(v, dict) else {"default": v} for k, v in declared.items()},
    )


def _check_declaration(path: Path, key: str, spec: Any) -> None:
    """Project.Validate's checks of a declared key (sdk/go/common/workspace/project.go)."""
    if not isinstance(spec, dict):
        return
    where = f"could not validate '{path}'"
    if spec.get("type") == "array" and "items" not in spec:
        raise CliError(
            f"{where}: The configuration key '{key}' declares an array but does not specify the "
            "underlying type via the 'items' attribute"
        )
    if "default" in spec and "value" in spec:
        raise CliError(
            f"{where}: project config '{key}' cannot have both a 'default' and 'value' attribute"
        )
    if "default" in spec and spec.get("type") and not conforms(spec, spec["default"]):
        raise CliError(
            f"{where}: The default value specified for configuration key '{key}' is not of the "
            f"expected type '{type_name(spec)}'"
        )


# -- config values ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """One stack config value: text, an object (list or map), or `secure` ciphertext."""

    text: str | None = None
    obj: Any = None
    secure: str | None = None

    @property
    def is_object(self) -> bool:
        return self.obj is not None

    @classmethod
    def from_yaml(cls, raw: Any) -> Value:
        if isinstance(raw, dict) and set(raw) == {"secure"}:
            return cls(secure=str(raw["secure"]))
        if isinstance(raw, dict | list):
            return cls(obj=raw)
        if isinstance(raw, bool):  # object.MarshalString: a YAML bool is its text
            return cls(text="true" if raw else "false")
        return cls(text="" if raw is None else str(raw))

    def to_yaml(self) -> Any:
        if self.secure is not None:
            return {"secure": self.secure}
        return self.obj if self.is_object else self.text

    def program_text(self, decrypt: Any) -> str:
        """What the program gets: the text, an object as compact JSON, a secret decrypted."""
        if self.secure is not None:
            return str(decrypt(self.secure))
        if self.is_object:
            return json.dumps(self.obj, separators=(",", ":"))
        return self.text or ""


@dataclass
class StackFile:
    """A `Pulumi.<stack>.yaml`; a missing one reads as empty (LoadProjectStack)."""

    path: Path
    secrets_provider: str = ""
    encrypted_key: str = ""
    encryption_salt: str = ""
    config: dict[str, Value] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackFile:
        if not path.exists():
            return cls(path)
        raw = yaml.safe_load(path.read_text()) or {}
        return cls(
            path,
            secrets_provider=str(raw.get("secretsprovider") or ""),
            encrypted_key=str(raw.get("encryptedkey") or ""),
            encryption_salt=str(raw.get("encryptionsalt") or ""),
            config={str(k): Value.from_yaml(v) for k, v in (raw.get("config") or {}).items()},
        )

    def save(self) -> None:
        data: dict[str, Any] = {}
        for key, value in (
            ("secretsprovider", self.secrets_provider),
            ("encryptedkey", self.encrypted_key),
            ("encryptionsalt", self.encryption_salt),
        ):
            if value:
                data[key] = value
        if self.config:
            data["config"] = {k: v.to_yaml() for k, v in sorted(self.config.items())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
        tmp.replace(self.path)


def full_key(project: Project, key: str) -> str:
    """`key` with the project's namespace when it has none (ParseConfigKey)."""
    return key if ":" in key else f"{project.name}:{key}"


# -- types ------------------------------------------------------------------------------------


def type_name(spec: Mapping[str, Any]) -> str:
    """InferFullTypeName: `string`, `integer`, `boolean`, `object`, `array<T>`."""
    kind = str(spec.get("type") or "")
    if kind == "array":
        return f"array<{type_name(spec.get('items') or {})}>"
    return kind


def conforms(spec: Mapping[str, Any], value: Any) -> bool:
    """ValidateConfigValue: text for `string`; "true"/"false" or a bool for `boolean`; a whole
    number or its text for `integer`; a map for `object`; a list of conforming items for an
    array."""
    kind = spec.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if kind == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return True
        return isinstance(value, str) and value.lstrip("+-").isdigit()
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        items = spec.get("items")
        return (
            isinstance(value, list) and items is not None and all(conforms(items, v) for v in value)
        )
    return True


def merged_config(
    project: Project, stack: str, config: Mapping[str, Value], decrypt: Any, *, validate: bool
) -> dict[str, Value]:
    """The stack's config with the project's defaults applied, checked when `validate` (up,
    preview; destroy and refresh only with --run-program). Raises CliError with the CLI's
    words, wrapped as its callers wrap them."""
    merged = dict(config)
    missing = []
    for key in sorted(project.config):
        spec = project.config[key]
        full = full_key(project, key)
        if full in merged:
            continue
        if "default" in spec or "value" in spec:
            default = spec.get("default", spec.get("value"))
            merged[full] = (
                Value(obj=default)
                if isinstance(default, dict | list)
                else Value(text=_go_text(default))
            )
        elif full.startswith(f"{project.name}:"):
            missing.append(key)
    if missing:
        raise CliError(
            f"validating stack config: Stack '{stack}' is missing configuration "
            f"{'value' if len(missing) == 1 else 'values'} {_listed(missing)}"
        )
    if not validate:
        return merged
    for key in sorted(project.config):
        spec = project.config[key]
        if not spec.get("type"):
            continue
        value = merged[full_key(project, key)]
        plain = value.obj if value.is_object else value.program_text(decrypt)
        if not conforms(spec, plain):
            raise CliError(
                f"validating stack config: Stack '{stack}' with configuration key '{key}' "
                f"must be of type '{type_name(spec)}'"
            )
    return merged


def _go_text(value: Any) -> str:
    """fmt.Sprintf("%v", v) of a YAML scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _listed(keys: list[str]) -> str:
    """formatMissingKeys: 'a'; 'a' and 'b'; 'a', 'b' and 'c'."""
    quoted = [f"'{k}'" for k in keys]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
