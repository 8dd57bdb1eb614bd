"""A stand-in for the `pulumi` CLI, the true boundary below the Automation API.

No Pulumi CLI can be installed here. The Automation API library runs for real and starts this
in its place (`python -m citrus_deploy.standin.cli`, put on PATH as `pulumi` by
`install_launcher`). It answers the commands the library runs as the real CLI (v3.272) does,
each behaviour traced to pulumi/pulumi in the module that has it: the project and stack files
and typed config (standin.cli.project), the DIY file backend, its lock, history and secrets manager
(standin.cli.backend), the commands (standin.cli.commands), the operations with their signal
handling and exit codes (standin.cli.operations), and the event log over gRPC
(standin.cli.events). The operations run the real program under the engine stand-in
(standin.engine): real rows from the real provider in a real provider host, DigitalOcean faked.
Where it still differs from the real CLI, the module's docstring says so.
"""

from __future__ import annotations

import sys
from pathlib import Path


def install_launcher(bindir: Path, *, python: str = sys.executable) -> Path:
    """Writes `bindir/pulumi`, which runs this stand-in with `python`; returns its path."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "pulumi"
    script.write_text(f'#!/bin/sh\nexec "{python}" -m citrus_deploy.standin.cli "$@"\n')
    script.chmod(0o755)
    return script
