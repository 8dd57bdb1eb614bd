"""Fixtures of the browser tests: a real web process and worker under the engine stand-in, and
headless Chromium. A failed test leaves screenshots of every open tab (CITRUS_SCREENSHOT_DIR, or
the test's tmp_path), named in its report."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chrome import missing
from tests.service.conftest import Web, Worker, launch_worker, starter

REASON = missing()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REASON:
        skip = pytest.mark.skip(reason=f"browser test: {REASON}")
        for item in items:
            if "tests/browser" in str(item.path):
                item.add_marker(skip)


SCREENSHOTS = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    browser = getattr(item, "funcargs", {}).get("browser")
    if report.when != "call" or not report.failed or browser is None:
        return report
    folder = item.stash[SCREENSHOTS]
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    try:
        for number, handle in enumerate(browser.window_handles):
            browser.switch_to.window(handle)
            path = folder / f"{item.name}-tab{number}.png"
            browser.save_screenshot(str(path))
            saved.append(f"{path} ({browser.current_url})")
    except Exception as exc:  # the browser itself may be what failed
        saved.append(f"(screenshots stopped: {type(exc).__name__}: {exc})")
    report.sections.append(("screenshots", "\n".join(saved) or "(no tab open)"))
    return report


@pytest.fixture
def start_web(service_db: str, tmp_path: Path) -> Iterator[Callable[..., Web]]:
    yield from starter(Web, "web", service_db, tmp_path)


@pytest.fixture
def start_worker(service_db: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    yield from starter(launch_worker, "worker", service_db, tmp_path)


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from tests.browser.chrome import chrome

    folder = os.environ.get("CITRUS_SCREENSHOT_DIR")
    request.node.stash[SCREENSHOTS] = Path(folder) if folder else tmp_path / "screenshots"
    driver = chrome()
    yield driver
    driver.quit()
