"""The README stays a five-minute read, and no relative link in it or in docs/ is broken.

CI also builds docs/ with `mkdocs build --strict` (.ci/run); these checks run with
`scripts/test`, so a broken link fails there too.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from tests.paths import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README_MAX_BYTES = 12 * 1024  # the rest belongs in docs/

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # https:, mailto:


def relative_links(markdown: str) -> list[str]:
    """Targets of the links and images in `markdown` that name a file (not a URL, not an
    anchor of the same page), outside code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not SCHEME.match(t) and not t.startswith("#")]


def test_relative_links_skips_urls_anchors_and_code() -> None:
    text = (
        '[a](docs/a.md#part) ![b](shots/b.png "B") [c](https://example.com) [d](#here)\n'
        "`[e](e.md)` <http://localhost:8000>\n```\n[f](f.md)\n```\n[g]: g.md\n"
    )
    assert relative_links(text) == ["docs/a.md#part", "shots/b.png", "g.md"]


def test_the_readme_is_under_12_kib() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, (
        f"README.md is {size} bytes, the limit {README_MAX_BYTES}: move detail into docs/"
    )


def test_the_readme_links_into_the_docs() -> None:
    assert "docs/index.md" in relative_links(README.read_text())


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_to_a_file(page: Path) -> None:
    missing = [
        target
        for target in relative_links(page.read_text())
        if (path := unquote(target.split("#", 1)[0]))  # anchors are not checked here
        and not (page.parent / path).exists()
    ]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_every_page_is_in_the_site_navigation() -> None:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {page.name for page in PAGES}
