"""The status page in a real browser: Debian's headless chromium, driven through its own
chromedriver by selenium (never selenium-manager, never a downloaded browser), against a
real `offboard serve` working on the sandbox emulators.

A leaver case is opened through the API and waits for its portal-sessions task; the
browser signs in, sees the case and its task, confirms it, watches the case move on to
contained and the countdown tick. Every wait is an explicit condition with a deadline.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.acceptance import cli
from tests.flows import assert_contained_in_order, delete_portal_sessions
from worker.sandbox import Sandbox, SeededUser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "ui-browser-token-" + "z" * 30
#: the longest any condition is waited for (the page refreshes itself every 5 s)
DEADLINE = 30


def _chromium(tmp_path: Path) -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: run `make browser` "
            "(installs Debian's chromium and chromium-driver)"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager is never asked for (or to download) anything
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def _in_browser(base: str, case_id: str, tmp_path: Path) -> dict[str, Any]:
    """Blocking: runs in a thread while the test's event loop serves the emulators."""
    driver = _chromium(tmp_path)
    try:
        wait = WebDriverWait(
            driver,
            DEADLINE,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        card = f'article[data-case="{case_id}"]'
        task_button = f'{card} li.task[data-step="portal-sessions"] form.confirm button'

        driver.get(f"{base}/ui")
        wait.until(ec.url_to_be(f"{base}/ui/login"))
        driver.find_element(By.ID, "token").send_keys("wrong-" + TOKEN)
        driver.find_element(By.CSS_SELECTOR, "main.login button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.alert"), "not valid"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "main.login button[type=submit]").click()
        wait.until(ec.url_to_be(f"{base}/ui"))

        # the case, waiting on its task, with the console link and the Confirm button
        wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, f'{card}[data-status="waiting"]'))
        )
        console = driver.find_element(By.CSS_SELECTOR, f"{card} li.task a.console")
        assert console.get_attribute("rel") == "noopener noreferrer"
        assert console.get_attribute("href").startswith("https://")
        assert driver.find_element(By.CSS_SELECTOR, task_button).text == "Confirm portal-sessions"
        cookie = driver.get_cookie("offboard_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly

        def confirm(d: WebDriver) -> bool:
            # the list may be swapped for a fresh one between find and click: retried
            d.find_element(By.CSS_SELECTOR, task_button).click()
            return True

        wait.until(confirm)
        wait.until(ec.url_contains(f"/ui#case-{case_id}"))
        # the worker runs the last step; the page's own refresh shows the case move on
        contained = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, f'{card}[data-status="contained"]'))
        )
        assert not contained.find_elements(By.CSS_SELECTOR, "form.confirm")

        # the countdown ticks every second, from the browser's clock
        ticker = (By.CSS_SELECTOR, f'{card} li.milestone[data-milestone="all-lapsed"] .countdown')
        first = wait.until(lambda d: d.find_element(*ticker).text)
        second = wait.until(lambda d: (t := d.find_element(*ticker).text) != first and t)
        assert first.startswith("in ") and second.startswith("in "), (first, second)

        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        console_errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        return {
            "countdown": (first, second),
            "resources": resources,
            "errors": console_errors,
        }
    finally:
        driver.quit()


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Read a child's log as it comes, so a full pipe never stops it."""
    chunks = []
    while chunk := await stream.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def _case(http: aiohttp.ClientSession, base: str, case_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{base}/v1/cases/{case_id}", headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_a_browser_signs_in_confirms_the_task_and_watches_the_countdown(
    sandbox: Sandbox, leaver: SeededUser, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config_data["server"] = {"port": 0, "api_tokens": {"ops": {"env": "UI_TOKEN"}}}
    config = cli.write_config(tmp_path / "offboard.yaml", config_data)
    env = cli.environment({**sandbox.environment(), "UI_TOKEN": TOKEN})
    serve = await cli.start(["--config", str(config), "serve"], env, tmp_path)
    assert serve.stdout is not None and serve.stderr is not None
    log = asyncio.create_task(_drain(serve.stderr))
    try:
        line = (await asyncio.wait_for(serve.stdout.readline(), 30)).decode()
        assert line.startswith("offboard serving on "), line
        base = line.split()[-1]
        async with aiohttp.ClientSession() as http:
            request = {"playbook": "leaver", "subject": leaver.login, "reason": "left"}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{base}/v1/cases", json=request, headers=headers) as r:
                assert r.status == 201, await r.text()
                case_id = (await r.json())["case_id"]
            for _ in range(400):
                if (await _case(http, base, case_id))["status"] == "waiting":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the case never waited for its operator task")
            # what the operator does in the console before confirming
            await delete_portal_sessions(sandbox, leaver)

            started = time.monotonic()
            seen = await asyncio.to_thread(_in_browser, base, case_id, tmp_path)
            print(f"browser session: {time.monotonic() - started:.1f} s; countdown {seen}")

            detail = await _case(http, base, case_id)
        assert detail["status"] == "contained"
        assert [t["confirmed_by"] for t in detail["operator_tasks"]] == ["ui:ops"]
        # our script and stylesheet, and the page fetching itself: nothing from elsewhere
        assert all(url.startswith(f"{base}/ui") for url in seen["resources"]), seen
        # the one error expected: the 401 answering the wrong token on purpose
        errors = [
            e
            for e in seen["errors"]
            if not ("/ui/login" in e["message"] and "status of 401" in e["message"])
        ]
        assert errors == [], "the browser reported errors (a CSP violation?)"
        assert_contained_in_order(sandbox, leaver)
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.wait_for(serve.wait(), 30)
        err = (await log).decode()
    assert serve.returncode == 0, err
    assert TOKEN not in err
