"""Where the tests find the repository's own files (fixtures, goldens, workflows)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
