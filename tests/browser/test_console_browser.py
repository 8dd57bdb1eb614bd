"""The operator console in headless Chromium, against a real web process and a real worker
running deployments under the engine stand-in (each provider call slowed down, so a deployment
takes seconds): sign in, deploy from the page, watch it live, destroy it, sign out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from tests.browser.chrome import viewport
from tests.browser.conftest import Web
from tests.service.conftest import TOKEN, Worker

STEP_DELAY = "0.5"  # seconds per provider call of the stand-in engine


def wait(browser: Any, what: str, check: Callable[[Any], Any], timeout: float = 20) -> Any:
    return WebDriverWait(
        browser,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(check, message=f"waiting for {what}")


def text_of(browser: Any, css: str) -> str:
    found: str = browser.find_element(By.CSS_SELECTOR, css).text
    return found


def fleet_row(browser: Any, name: str) -> Any:
    link = browser.find_element(By.CSS_SELECTOR, f'#fleet-rows a[data-focus="{name}"]')
    return link.find_element(By.XPATH, "./ancestor::tr")


def test_an_operator_deploys_watches_and_destroys_a_server(
    browser: Any,
    start_web: Callable[..., Web],
    start_worker: Callable[..., Worker],
) -> None:
    web = start_web()
    start_worker(CITRUS_TEST_ENGINE_STEP_DELAY=STEP_DELAY)

    # Signed out, the fleet is the sign-in page; sign in with the keyboard.
    browser.get(f"{web.url}/console")
    assert browser.current_url.startswith(f"{web.url}/console/sign-in")
    token = browser.find_element(By.ID, "token")
    assert browser.switch_to.active_element == token  # autofocus
    token.send_keys("wrong-token", Keys.ENTER)
    wait(browser, "the refusal", lambda b: "not the admin token" in text_of(b, ".message"))
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    wait(browser, "the fleet", lambda b: b.find_element(By.TAG_NAME, "h1").text == "Fleet")
    assert "No servers yet" in text_of(browser, "#fleet-rows")
    wait(browser, "the live stream", lambda b: text_of(b, "#live").startswith("Live"))
    browser.execute_script("window.sameFleetPage = true")
    fleet_tab = browser.current_window_handle

    # A second tab deploys web-1 from the form and lands on its page.
    browser.switch_to.new_window("tab")
    browser.get(f"{web.url}/console")
    browser.find_element(By.ID, "deploy-name").send_keys("web-1", Keys.ENTER)
    wait(browser, "the server page", lambda b: b.current_url.endswith("/console/servers/web-1"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "web-1"
    browser.execute_script("window.sameServerPage = true")
    shown_at_load = len(text_of(browser, "#output"))
    # Its output arrives while it runs, without a reload.
    wait(
        browser,
        "engine output",
        lambda b: (
            "agent-server" in text_of(b, "#output") and len(text_of(b, "#output")) > shown_at_load
        ),
    )
    assert text_of(browser, "#deployment-state") in ("queued", "running")

    # Meanwhile the first tab's fleet shows it, pushed by the service.
    browser.switch_to.window(fleet_tab)
    wait(browser, "web-1 in the fleet", lambda b: fleet_row(b, "web-1"))
    row = fleet_row(browser, "web-1").text
    assert "provisioning" in row
    assert "up #1" in row
    assert browser.execute_script("return window.sameFleetPage") is True
    # At phone width the rows become cards: nothing runs off the side of the page.
    viewport(browser, 390, 800)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    viewport(browser, 1200, 800)

    # Back on its page: the deployment finishes; then a wrong name does not destroy it.
    browser.switch_to.window(browser.window_handles[1])
    wait(
        browser,
        "the deployment to finish",
        lambda b: "succeeded" in text_of(b, "#output-status"),
        timeout=40,
    )
    assert "created" in text_of(browser, "#output")
    assert browser.execute_script("return window.sameServerPage") is True
    browser.refresh()
    assert "agent-web-1" in text_of(browser, ".rows")
    browser.find_element(By.ID, "confirm").send_keys("web-2", Keys.ENTER)
    wait(browser, "the refusal", lambda b: "nothing was destroyed" in text_of(b, ".message"))
    browser.find_element(By.ID, "confirm").send_keys("web-1", Keys.ENTER)
    wait(browser, "the destroy", lambda b: "destroy #2" in text_of(b, "#current-title"))

    # The fleet tab sees it go.
    browser.switch_to.window(fleet_tab)
    wait(browser, "destroying", lambda b: "destroying" in fleet_row(b, "web-1").text)
    wait(
        browser,
        "web-1 gone from the fleet",
        lambda b: "No servers yet" in text_of(b, "#fleet-rows"),
        timeout=40,
    )
    assert browser.execute_script("return window.sameFleetPage") is True

    # Sign out with the keyboard; the fleet URL is the sign-in page again.
    sign_out = browser.find_element(By.CSS_SELECTOR, ".sign-out button")
    sign_out.send_keys(Keys.ENTER)
    wait(browser, "the sign-in page", lambda b: "/console/sign-in" in b.current_url)
    browser.get(f"{web.url}/console")
    assert browser.current_url.startswith(f"{web.url}/console/sign-in")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign in"
