"""Fixtures of the browser tests: a real web process and worker under the engine stand-in, and
headless Chromium. A failed test leaves screenshots of every open tab (CITRUS_SCREENSHOT_DIR, or
the test's tmp_path), named in its report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from citrus_deploy.standin.pg import free_port
from tests.browser.chrome import missing
from tests.paths import REPO
from tests.service.conftest import Worker, launch_worker, starter

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


class Web:
    """`python -m service web` in a process of its own, on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if k not in env}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citrus_deploy", "service", "web"],
                cwd=REPO,
                env={**clean, **env, "CITRUS_PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the web process did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
