"""The try-it page in a real browser: headless Chromium (Selenium) against a live server on
loopback with the tiny serving models. It uploads an image, waits for the views and the
turntable, and checks what the page shows against the JSON API's answer to the same request;
bad input shows the API's message. Skips (saying why) without chromium and chromedriver.

DISTILL_PAGE_SCREENSHOT=1 also saves docs/serve/page.png (any other value: that path); the
committed screenshot is of the shipped models (scripts/page_screenshot.py).
"""

import os
import re
from pathlib import Path

import httpx
import pytest
from page_util import (
    choose,
    css,
    error_text,
    find_browser,
    open_page,
    run,
    screenshot,
    set_compare,
    set_seed,
    shown,
    upload,
    wait,
)
from serve_util import RunningServer, png, serve_config, write_sweep
from tiny_util import ROOT

TOKEN = "page-admin-token"
FOUND = find_browser()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=str(FOUND))


@pytest.fixture(scope="module")
def live(serving, tmp_path_factory):
    sweep = write_sweep(tmp_path_factory.mktemp("sweep") / "results.json")
    cfg = serve_config(serving, sweep=str(sweep), admin_token=TOKEN)
    with RunningServer(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from page_util import chrome

    driver = chrome()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("page") / "object.png"
    p.write_bytes(png(48, seed=1))
    return p


def _api(live, image: Path, **params) -> dict:
    r = httpx.post(
        live.base + "/v1/generate",
        content=image.read_bytes(),
        params=params,
        headers={"content-type": "image/png"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _ms(text: str) -> float:
    m = re.fullmatch(r"(\d+\.\d) ms", text)
    assert m, text
    return float(m.group(1))


def test_page_asks_for_an_image_first(live, browser):
    open_page(browser, live.base)
    run(browser)
    assert error_text(browser) == "Pick or drop an image first (PNG or JPEG)."


def test_page_shows_what_the_api_answers(live, browser, image):
    open_page(browser, live.base)
    upload(browser, image)
    choose(browser, "A", "shortcut", steps=2)
    set_seed(browser, 7)
    run(browser)
    assert error_text(browser) == ""
    got = shown(browser, "A")
    api = _api(live, image, student="shortcut", steps=2, seed=7)
    assert (got["student"], got["steps"], got["seed"]) == (api["student"], api["steps"], 7)
    assert got["title"].startswith("A: shortcut @ 2 steps") and api["weights"] in got["title"]
    # the same image, student, steps and seed, each alone in its batch: the same views
    assert got["views"] == [f"data:image/png;base64,{v}" for v in api["views_png"]]
    keys = {"diffusion", "reconstruction", "encode", "queue", "compute", "total"}
    assert set(got["timings"]) == keys | {"batch_size", "turntable"}
    assert all(_ms(got["timings"][k]) >= 0 for k in keys | {"turntable"})
    assert got["timings"]["batch_size"] == "1" and "in the browser" in got["took"]
    assert got["turntable"] == 24 and got["frame"].startswith("data:image/png;base64,")
    assert got["ply"] == "shortcut-2steps-seed7.ply" and got["picked"] is None
    note = css(browser, "#pareto-note").text
    assert "5 sweep points from results.json" in note and "Ringed: A shortcut@2" in note
    out = os.environ.get("DISTILL_PAGE_SCREENSHOT")
    if out:
        path = ROOT / "docs/serve/page.png" if out == "1" else Path(out)
        assert screenshot(browser, path).stat().st_size > 10_000


def test_compare_mode_runs_two_choices_on_one_seed(live, browser, image):
    """A by name, B by a latency budget that picks the same (student, steps): same views."""
    open_page(browser, live.base)
    upload(browser, image)
    set_compare(browser, True)
    choose(browser, "A", "consistency", steps=2)
    choose(browser, "B", budget_ms=60000)
    set_seed(browser, 11)
    run(browser)
    assert error_text(browser) == ""
    a, b = shown(browser, "A"), shown(browser, "B")
    assert (a["student"], a["steps"], b["student"], b["steps"]) == ("consistency", 2) * 2
    assert a["views"] == b["views"] and a["seed"] == b["seed"] == 11
    assert b["picked"].startswith("A budget of 60000 ms picked consistency@2: best fid")
    assert "3 options on the front fit" in b["picked"] and a["picked"] is None
    assert a["turntable"] == b["turntable"] == 24
    assert "Ringed: A consistency@2, B consistency@2" in css(browser, "#pareto-note").text


def test_bad_input_shows_the_api_message(live, browser, image, tmp_path):
    open_page(browser, live.base)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    upload(browser, bad)
    run(browser)
    assert error_text(browser) == (
        "422 Unprocessable Entity: bad image: not a readable PNG/JPEG image "
        "(the formats accepted are PNG and JPEG)"
    )
    assert shown(browser, "A") is None
    upload(browser, image)
    choose(browser, "A", "teacher", steps=50)  # known, listed, not loaded
    run(browser)
    assert error_text(browser) == (
        "409 Conflict: student 'teacher' is not loaded; activate it first "
        "(POST /v1/students/teacher/activate)"
    )
    choose(browser, "A", budget_ms=-5)
    run(browser)
    assert error_text(browser).startswith("422 Unprocessable Entity: invalid request: latency_ms")
    big = tmp_path / "big.png"
    big.write_bytes(png(16) + os.urandom(5 * 2**20))
    upload(browser, big)
    choose(browser, "A", "shortcut", steps=1)
    run(browser)
    assert error_text(browser) in (  # the answer, or (if the browser sees the close first) why
        "413 Request Entity Too Large: request body exceeds the limit of 4194304 bytes",
        "the server closed the connection before answering (is the image over its size limit, "
        "or is the server down?)",
    )
    upload(browser, image)
    run(browser)
    assert error_text(browser) == "" and shown(browser, "A")["turntable"] == 24


def test_admin_activate_needs_the_token(live, browser):
    from selenium.webdriver.support.ui import Select

    open_page(browser, live.base)
    Select(css(browser, "#admin-student")).select_by_value("consistency")
    css(browser, "#activate").click()
    msg = "#admin-msg"
    wait(browser, lambda d: "activating" not in css(d, msg).text and css(d, msg).text, 60)
    assert css(browser, msg).text.startswith("401 Unauthorized: admin route: send 'Authorization")
    assert httpx.get(live.base + "/healthz").json()["active"] == "shortcut"
    css(browser, "#token").send_keys(TOKEN)
    css(browser, "#activate").click()
    wait(browser, lambda d: "is active" in css(d, msg).text, 60)
    assert css(browser, msg).text.startswith("consistency is active (consistency, weights ")
    assert httpx.get(live.base + "/healthz").json()["active"] == "consistency"
    assert "consistency (active)" in css(browser, "#admin-student").text
