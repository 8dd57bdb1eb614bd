"""Headless Chromium from Debian's packages, driven by Selenium through Debian's chromedriver.

The browser tests and scripts/screenshots share this setup. Nothing is downloaded: the browser
and its driver are the `chromium` and `chromium-driver` packages (scripts/setup installs them).
"""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    gone = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if gone:
        return f"no {' and no '.join(gone)}: apt-get install chromium chromium-driver"
    return None


def chrome(width: int = 1200, height: int = 800) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # Given the driver's path, Selenium never runs Selenium Manager (which would download one).
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    viewport(driver, width, height)
    return driver


def viewport(driver: webdriver.Chrome, width: int, height: int) -> None:
    """The page's own size, exactly (--window-size counts the browser's frame too)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
