"""`labq demo` end to end, and its HTML report in a real headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from selenium import webdriver

from conftest import ARTIFACTS

LABQ = str(Path(sys.executable).with_name("labq"))


def test_demo_prints_every_status_and_writes_a_report_a_browser_shows(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    env = {**os.environ, "LABQ_STATE_DIR": str(tmp_path), "LABQ_FLOWER_PORT": "0",
           "LABQ_SHUTDOWN_TIMEOUT": "5", "COLUMNS": "160"}
    out = subprocess.run([LABQ, "demo"], env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for status in ("succeeded", "soft_timeout", "hard_timeout", "failed"):
        assert status in text, status
    assert "AuthenticationFailed" in text and "DeviceUnreachable" in text
    assert re.search(r"Flower: http://127\.0\.0\.1:\d+", text)
    assert "labq demo --keep keeps the stack up" in text
    report = Path(re.search(r"report: (\S+\.html)", text).group(1))  # type: ignore[union-attr]
    assert report.is_file()

    browser.get(report.as_uri())
    bars = browser.find_elements("css selector", "svg rect.bar")
    lanes = browser.find_elements("css selector", "svg text.lane")
    rows = browser.find_elements("css selector", "h2 + table tr, table tr")
    assert len(bars) == 21  # 20 devices and the stubborn diag task
    statuses = {b.get_attribute("data-status") for b in bars}
    assert {"succeeded", "soft_timeout", "hard_timeout", "failed"} <= statuses
    slots = {t.text for t in lanes}
    assert len(lanes) == len(slots) >= 2
    # Each bar carries its device's name, not only a tooltip.
    labels = browser.find_elements("css selector", "svg svg.bar-label text")
    assert [b.get_attribute("data-device") for b in bars] == [
        t.get_attribute("textContent").strip() for t in labels]
    assert {f"r{i}" for i in range(1, 21)} <= {b.get_attribute("data-device") for b in bars}
    # Axis ticks fall on round values: one step, a whole number of times.
    ticks = [t.text for t in browser.find_elements("css selector", "svg text.tick")]
    values = [float(t.split()[0]) for t in ticks[1:]]
    assert ticks[0] == "0" and all(re.fullmatch(r"\d+(\.\d+)? s", t) for t in ticks[1:]), ticks
    assert values == [values[0] * k for k in range(1, len(values) + 1)], ticks
    assert str(values[0]).rstrip("0").rstrip(".")[-1] in "125", ticks
    assert rows
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo-report.png"))
