"""Headless Chromium for the tests that look at a page as a user would (Debian's chromium and
chromedriver; .ci/run installs them). A test skips, saying why, where they are missing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def skip_without_chromium() -> None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium "
                    "chromium-driver; .ci/run does this)")


@contextmanager
def chromium(workdir: Path, *flags: str, window: str = "1000,900",
             console_log: bool = False) -> Iterator:
    """A selenium driver of headless Chromium with a new profile under `workdir` (so no
    browser storage carries over), its chromedriver log beside it; `flags` add to the usual
    ones, `console_log` keeps the page's console for `driver.get_log("browser")`."""
    skip_without_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}", f"--window-size={window}",
                 *flags):
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(workdir / "driver.log")),
                              options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
