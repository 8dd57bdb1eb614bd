"""The program's resource plugins, installed when a worker starts (`python -m
citrus_deploy.engine.plugins`, run by install_pinned_plugins), at exactly the versions the
installed packages pin."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from citrus_deploy.engine.child import WORKER_ONLY_ENV
from citrus_deploy.engine.deployer import last_lines
from citrus_deploy.errors import CitrusError

log = logging.getLogger("citrus.plugins")

# The program's resource plugins, by the Python package that pins each one's version.
PLUGIN_PACKAGES = ("pulumi_digitalocean", "pulumi_random")
# A first install downloads both plugins (tens of MB); past this the worker gives up, saying so.
PLUGIN_INSTALL_TIMEOUT = 900.0


class PluginInstallError(CitrusError):
    """A resource plugin could not be installed: the worker must not start without it."""


@dataclass(frozen=True)
class Plugin:
    name: str  # "digitalocean"
    version: str  # "4.84.1", without the CLI's "v"
    package: str  # the Python package that pins it: "pulumi_digitalocean"


def pinned_plugins(packages: Sequence[str] = PLUGIN_PACKAGES) -> list[Plugin]:
    """Each package's resource plugin at the version the installed package pins.

    A pulumi_<name> package ships `pulumi-plugin.json` ({"resource": true, "name", "version"}),
    which the Python language host reads to tell the engine which plugin to load; without it,
    the plugin is <name> at the distribution's own version, the one its resources ask for.
    """
    found = []
    for package in packages:
        try:
            pinned = json.loads((resources.files(package) / "pulumi-plugin.json").read_text())
            name, version = str(pinned["name"]), str(pinned["version"])
        except (ModuleNotFoundError, FileNotFoundError, KeyError, ValueError):
            name = package.removeprefix("pulumi_")
            try:
                version = metadata.version(package.replace("_", "-"))
            except metadata.PackageNotFoundError:
                raise PluginInstallError(
                    f"the Python package {package} is not installed, and the program needs it "
                    "(pip install -r requirements.txt)"
                ) from None
        found.append(Plugin(name=name, version=version.removeprefix("v"), package=package))
    return found


def install_pinned_plugins(work_dir: Path, timeout: float = PLUGIN_INSTALL_TIMEOUT) -> list[Plugin]:
    """Installs the pinned plugins before a worker takes a job; raises PluginInstallError.

    The first `up` under a PULUMI_HOME would otherwise download them, and a worker that cannot
    (offline, proxy) would fail every deployment as if the deployment were at fault. The CLI
    runs in `python -m citrus_deploy.engine.plugins`, whose environment lacks the worker's own
    secrets (engine.child.WORKER_ONLY_ENV) as a deployment's does; PULUMI_HOME and proxies pass. The
    CLI runs in the worker's work directory, not in the program's.
    """
    plugins = pinned_plugins()
    env = {name: value for name, value in os.environ.items() if name not in WORKER_ONLY_ENV}
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "citrus_deploy.engine.plugins", str(work_dir)]
    command += [f"{plugin.name}={plugin.version}={plugin.package}" for plugin in plugins]
    try:
        done = subprocess.run(
            command, cwd=work_dir, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise PluginInstallError(
            f"installing the Pulumi resource plugins ({_listed(plugins)}) took more than "
            f"{timeout:.0f}s; the worker does not start without them"
        ) from None
    if done.returncode != 0:
        raise PluginInstallError(
            last_lines(done.stderr, 8) or f"the plugin installer exited with {done.returncode}"
        )
    log.info("resource plugins ready: %s", _listed(plugins))
    return plugins


def install_plugins(plugins: Sequence[Plugin], work_dir: Path) -> None:
    """`pulumi plugin install resource <name> v<version>` for each, through the Automation API.

    The CLI gets this process's environment: call it through install_pinned_plugins.
    """
    from pulumi import automation as auto

    try:
        workspace = auto.LocalWorkspace(
            work_dir=str(work_dir), env_vars={"PULUMI_SKIP_UPDATE_CHECK": "true"}
        )
    except FileNotFoundError:
        raise PluginInstallError(
            "no `pulumi` CLI on PATH: a worker with CITRUS_DEPLOYER=automation runs it"
        ) from None
    for plugin in plugins:
        try:
            workspace.install_plugin(plugin.name, f"v{plugin.version}")
        except auto.CommandError as exc:
            # str(exc) is " code: ...\n stdout: ...\n stderr: ...": the error is in stderr.
            text = str(exc)
            _, found, stderr = text.partition("\n stderr: ")
            raise PluginInstallError(
                f"cannot install the Pulumi resource plugin {plugin.name} v{plugin.version} "
                f"(the version {plugin.package} pins); the worker does not start without it. "
                f"The CLI said:\n{last_lines(stderr if found else text, 3)}"
            ) from None


def _listed(plugins: Sequence[Plugin]) -> str:
    return ", ".join(f"{plugin.name} v{plugin.version}" for plugin in plugins)


def _install_main(argv: Sequence[str]) -> int:
    """`python -m citrus_deploy.engine.plugins <work dir> name=version=package ...`: the
    installer process."""
    work_dir, plugins = Path(argv[0]), [Plugin(*word.split("=", 2)) for word in argv[1:]]
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        install_plugins(plugins, work_dir)
    except PluginInstallError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # reported in one line, not as a traceback
        print(
            f"installing the Pulumi resource plugins ({_listed(plugins)}) failed: "
            f"{type(exc).__name__}: {last_lines(str(exc), 3)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_install_main(sys.argv[1:]))
