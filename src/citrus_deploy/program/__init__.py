"""The Pulumi program: the AgentServer component, its boot script, its rows' providers and the
rules of its config. `pulumi up` runs it from the project directory shipped beside it."""

from __future__ import annotations

from pathlib import Path

# The Pulumi project as shipped: Pulumi.yaml, the program's entry (__main__.py) and db/, the
# path at which earlier stacks' states name the row providers.
PROJECT_DIR = Path(__file__).resolve().parent / "project"
