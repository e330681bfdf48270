"""Flower in a real headless Chromium: auth, both workers online, a task just run.

Chromium is Debian's, driven by the system chromedriver; selenium-manager
is never asked to download anything. Basic auth travels as an extra HTTP
header set over the Chrome DevTools Protocol, so it applies to the page and
to every AJAX request its DataTables make. Screenshots of the workers and
tasks pages are saved to ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

import labq
from conftest import ARTIFACTS
from labq.app import LabqCelery
from labq.embedded.stack import Stack
from tasks.device import execute

# Cell texts of every row of a DataTable, read in one script call so that an
# autorefresh redrawing the table cannot leave us holding stale elements.
T = TypeVar("T")

TABLE_ROWS_JS = """
return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(
    tr => Array.from(tr.cells).map(td => td.innerText.trim()));
"""


def log_in(driver: webdriver.Chrome, stack: Stack) -> None:
    """Send Flower's basic-auth header with every request this page makes."""
    user, password = stack.settings.flower_user, stack.settings.flower_password
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def navigation_status(driver: webdriver.Chrome) -> int:
    """The HTTP status of the document the browser shows now."""
    status = driver.execute_script(
        "const nav = performance.getEntriesByType('navigation')[0];"
        "return nav ? nav.responseStatus : null;"
    )
    assert isinstance(status, int), f"no navigation timing entry for {driver.current_url}"
    return status


def table_rows(driver: webdriver.Chrome, selector: str) -> list[list[str]]:
    rows: Any = driver.execute_script(TABLE_ROWS_JS, selector)
    return list(rows or [])


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def wait_for_tasks(driver: webdriver.Chrome, found: Callable[[list[list[str]]], T | None],
                   shot: str) -> T:
    """Poll Flower's tasks page until ``found(rows)`` returns something; the
    tasks DataTable loads once per page view, so the page is reloaded to poll."""
    next_refresh = time.monotonic() + 3

    def poll(d: webdriver.Chrome) -> T | None:
        nonlocal next_refresh
        hit = found(table_rows(d, "#tasks-table"))
        if hit is None and time.monotonic() > next_refresh:
            next_refresh = time.monotonic() + 3
            d.refresh()
        return hit

    try:
        hit: T = WebDriverWait(driver, 30, poll_frequency=0.5).until(poll)
    except TimeoutException:
        screenshot(driver, shot)
        pytest.fail(f"not on Flower's tasks page: {table_rows(driver, '#tasks-table')}")
    return hit


def test_flower_refuses_the_browser_without_credentials(
    browser: webdriver.Chrome, stack: Stack
) -> None:
    browser.get(stack.flower_url + "/workers")

    assert navigation_status(browser) == 401
    # Chromium withholds the 401 body while its (headless, unanswered) auth
    # prompt is up: nothing of the dashboard reaches the page.
    assert browser.find_elements("id", "workers-table") == []
    for node in stack.node_names:
        assert node not in browser.page_source


def test_workers_page_shows_both_workers_online(browser: webdriver.Chrome, stack: Stack) -> None:
    log_in(browser, stack)
    browser.get(stack.flower_url + "/workers")
    assert navigation_status(browser) == 200
    assert "Flower" in browser.title

    def online(driver: webdriver.Chrome) -> dict[str, str] | None:
        status = {row[0]: row[1] for row in table_rows(driver, "#workers-table") if len(row) > 1}
        wanted = {node: status.get(node, "") for node in stack.node_names}
        return wanted if all(s == "Online" for s in wanted.values()) else None

    try:
        WebDriverWait(browser, 30, poll_frequency=0.5).until(online)
        # The summary card is filled by the same AJAX refresh as the table.
        WebDriverWait(browser, 10, poll_frequency=0.5).until(
            lambda d: d.find_element("id", "workers-online").text.strip().isdigit()
        )
    except TimeoutException:
        screenshot(browser, "flower-workers.png")
        pytest.fail(f"workers not online in Flower: {table_rows(browser, '#workers-table')}")
    shot = screenshot(browser, "flower-workers.png")

    assert int(browser.find_element("id", "workers-online").text) >= len(stack.node_names)
    assert shot.stat().st_size > 0


def test_tasks_page_shows_the_task_just_run(
    browser: webdriver.Chrome, stack: Stack, app: LabqCelery
) -> None:
    result = app.send_task("tasks.diag.echo", kwargs={"value": "browser-check"})
    assert result.get(timeout=30) == "browser-check"
    task_id = result.id

    log_in(browser, stack)
    browser.get(stack.flower_url + "/tasks")
    assert navigation_status(browser) == 200

    def task_row(rows: list[list[str]]) -> list[str] | None:
        return next((r for r in rows if "tasks.diag.echo" in r and task_id in r), None)

    row = wait_for_tasks(browser, task_row, "flower-tasks.png")
    shot = screenshot(browser, "flower-tasks.png")

    assert "SUCCESS" in row
    assert any(cell in stack.node_names for cell in row), row
    assert shot.stat().st_size > 0


def test_the_task_list_shows_each_device_tasks_device_and_run(
    browser: webdriver.Chrome, stack: Stack, app: LabqCelery
) -> None:
    with labq.Run("flower-devices", app=app, progress=False) as run:
        run.submit(execute, device="a5", command="show version")
        run.submit(execute, device="b5", command="show version")
    by_device = {o.device: o for o in run.outcomes}
    assert all(o.ok for o in by_device.values()), run.outcomes

    log_in(browser, stack)
    browser.get(stack.flower_url + "/tasks")
    assert navigation_status(browser) == 200
    headers: list[str] = browser.execute_script(
        "return Array.from(document.querySelectorAll('#tasks-table thead th'))"
        ".map(th => th.innerText.trim());")
    assert [h.lower() for h in headers[:2]] == ["name", "kwargs"], headers

    def device_rows(rows: list[list[str]]) -> dict[str, list[str]] | None:
        found = {device: row for row in rows for device, outcome in by_device.items()
                 if outcome.task_id in row}
        return found if len(found) == len(by_device) else None

    rows = wait_for_tasks(browser, device_rows, "flower-device-tasks.png")
    shot = screenshot(browser, "flower-device-tasks.png")
    assert shot.stat().st_size > 0
    for device, row in rows.items():
        # The kwargs cell, second: the device first, then the run, no testscript name.
        assert row[1].startswith(f"{{'device': '{device}', 'labq_run': '{run.id}'"), row
        assert "labq_script" not in row[1]


@pytest.mark.parametrize("query", ["kwargs:device={device}", "{device}"],
                         ids=["kwargs-pair", "substring"])
def test_flowers_search_finds_a_task_by_its_device_name(
    browser: webdriver.Chrome, stack: Stack, app: LabqCelery, query: str
) -> None:
    # Flower refuses substrings under 3 characters: "a6" is found only as a
    # kwargs pair, "slowpoke" either way.
    device = "a6" if query.startswith("kwargs") else "slowpoke"
    with labq.Run("flower-search", app=app, progress=False) as run:
        for name in (device, "b6", "a7"):
            run.submit(execute, device=name, command="show clock")
    wanted = next(o.task_id for o in run.outcomes if o.device == device)
    others = {o.task_id for o in run.outcomes} - {wanted}

    log_in(browser, stack)
    browser.get(stack.flower_url + "/tasks")
    wait_for_tasks(browser, lambda rows: True if any(wanted in r for r in rows) else None,
                   "flower-search.png")
    box = WebDriverWait(browser, 10).until(
        lambda d: d.find_element("css selector", "input[type=search]"))
    box.send_keys(query.format(device=device))

    def only_the_device(driver: webdriver.Chrome) -> list[list[str]] | None:
        rows = table_rows(driver, "#tasks-table")
        ids = {cell for row in rows for cell in row} & (others | {wanted})
        return rows if ids == {wanted} else None

    try:
        rows = WebDriverWait(browser, 15, poll_frequency=0.3).until(only_the_device)
    except TimeoutException:
        screenshot(browser, "flower-search.png")
        pytest.fail(f"search {query!r} shows {table_rows(browser, '#tasks-table')}")
    screenshot(browser, "flower-search.png")
    assert all(f"'device': '{device}'" in row[1] for row in rows), rows
