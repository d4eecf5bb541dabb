"""Driving the try-it page in headless Chromium (Selenium): find the browser, start it, pick an
image and the choices, run, read what the page shows. Used by tests/serve/test_page.py and by
scripts/page_screenshot.py (for the README's screenshot)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get install -y chromium chromium-driver"


def find_browser() -> tuple[str, str] | str:
    """(browser, chromedriver) paths, or why there are none (a skip reason)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    browser = os.environ.get("CHROME_BIN") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(
            n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p
        )
        return f"no {missing} found (Debian/Ubuntu: {INSTALL}; or set CHROME_BIN / CHROMEDRIVER)"
    return browser, driver


def chrome(width: int = 1280, height: int = 2200):
    """A headless Chromium at ``width`` x ``height`` CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def wait(driver, condition, timeout: float = 120.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def open_page(driver, base: str) -> None:
    """Load the page and wait until it has the students and the sweep."""
    driver.get(base + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), 60,
         "the page did not load its students")  # fmt: skip


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def upload(driver, path: Path) -> None:
    css(driver, "#file").send_keys(str(Path(path).resolve()))


def choose(driver, tag: str, student: str | None = None, steps: int | None = None,
           budget_ms: float | None = None) -> None:  # fmt: skip
    """Set choice A or B: a student and steps, or (``budget_ms``) a latency budget."""
    from selenium.webdriver.support.ui import Select

    fs = f"#choice-{tag.lower()}"
    if budget_ms is not None:
        Select(css(driver, f"{fs} .student")).select_by_value("__budget__")
        box = css(driver, f"{fs} .budget")
        box.clear()
        box.send_keys(str(budget_ms))
        return
    Select(css(driver, f"{fs} .student")).select_by_value(student)
    if steps is not None:
        Select(css(driver, f"{fs} .steps")).select_by_value(str(steps))


def set_seed(driver, seed: int) -> None:
    box = css(driver, "#seed")
    box.clear()
    box.send_keys(str(seed))


def set_compare(driver, on: bool) -> None:
    box = css(driver, "#compare")
    if box.is_selected() != on:
        box.click()


def run(driver, timeout: float = 300.0) -> None:
    """Click Generate and wait until the run (views and turntables, or errors) is over."""
    before = driver.execute_script("return Number(document.body.dataset.runs || 0)")
    css(driver, "#run").click()
    wait(driver, lambda d: d.execute_script("return Number(document.body.dataset.runs || 0)")
         > before, timeout, "the run did not finish")  # fmt: skip


def shown(driver, tag: str) -> dict:
    """What the page shows for result A or B: its data, views, timings, turntable, picked."""
    return driver.execute_script(
        """
        const n = document.getElementById(arguments[0]);
        if (!n) return null;
        const rows = {};
        n.querySelectorAll('.timings tr').forEach(
            (tr) => { rows[tr.dataset.key] = tr.cells[1].textContent; });
        const picked = n.querySelector('.picked');
        return {
            student: n.dataset.student, steps: Number(n.dataset.steps),
            seed: Number(n.dataset.seed), turntable: Number(n.dataset.turntable || 0),
            title: n.querySelector('.title').textContent,
            took: n.querySelector('.took').textContent,
            views: [...n.querySelectorAll('.views img')].map((i) => i.src),
            frame: n.querySelector('.turntable img').src,
            timings: rows, picked: picked.hidden ? null : picked.textContent,
            ply: n.querySelector('a.ply').download,
        };
        """,
        f"result-{tag.lower()}",
    )


def error_text(driver) -> str:
    return driver.execute_script(
        "const e = document.getElementById('error'); return e.hidden ? '' : e.textContent;"
    )


def screenshot(driver, out: Path) -> Path:
    """The whole page as a PNG (the viewport set to the page's size for the shot)."""
    width = driver.execute_script("return document.documentElement.clientWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(out))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return out
