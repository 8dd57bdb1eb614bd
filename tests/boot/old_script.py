"""Renders the reproduction of the old platform's boot script (fixtures/old_boot.sh).

Only for the boot tests, which compare it with ours; it keeps the old defects on purpose and is
never shipped. Values go in verbatim, unquoted, as the old platform put them in.
"""

from __future__ import annotations

import re
from pathlib import Path

OLD_BOOT_SCRIPT = Path(__file__).resolve().parent / "fixtures" / "old_boot.sh"
OLD_REPO = "github.com/limedrop-byte/citrus-agent.git"


def render_old_script(
    *,
    github_token: str,
    agent_id: str,
    agent_key: str,
    engine_ws_url: str,
    repo: str = OLD_REPO,
) -> str:
    """The old script with its placeholders filled; `repo` is host[:port]/path, cloned https."""
    text = OLD_BOOT_SCRIPT.read_text()
    for name, value in (
        ("GITHUB_TOKEN", github_token),
        ("AGENT_ID", agent_id),
        ("AGENT_KEY", agent_key),
        ("ENGINE_WS_URL", engine_ws_url),
        ("REPO", repo),
    ):
        text = text.replace(f"@@{name}@@", value)
    if left := re.findall(r"@@[A-Z_]+@@", text):
        raise ValueError(f"old_boot.sh placeholders left unfilled: {left}")
    return text
