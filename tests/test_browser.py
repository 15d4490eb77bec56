"""A real browser (Debian's Chromium driven by Playwright) uses the app as a person would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SEGDEMO_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "doc" / "screenshot.png"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    # Start-up (export + session) runs in the background; the banner says when it is done.
    page.wait_for_function(
        "(() => { const b = document.querySelector('#banner');"
        " return b && !b.innerText.includes('Starting:'); })()",
        timeout=300_000)
    yield page
    page.close()


def test_upload_segment_and_profile(page, photo_file, tmp_path):
    page.locator("input[type=file]").first.set_input_files(str(photo_file))
    page.get_by_role("button", name="Segment").click()
    page.locator("#overlay img").wait_for(state="visible", timeout=120_000)
    page.locator("#legend table.segdemo-legend").wait_for(timeout=60_000)
    legend_rows = page.locator("#legend table.segdemo-legend tbody tr")
    assert legend_rows.count() >= 1
    assert "%" in legend_rows.first.inner_text()
    page.locator("#status").get_by_text("onnxruntime").wait_for(timeout=30_000)
    assert "random weights" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "segment.png"), full_page=True)
    if os.environ.get("SEGDEMO_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)

    # The hover view: pointing at the picture highlights the class under the pointer and names it; so do the chips.
    view = page.locator("#hover .segdemo-hover[data-ready='1']")
    view.wait_for(timeout=30_000)
    stage = view.locator(".stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("Number(document.querySelector('#hover .segdemo-hover').dataset.highlighted) >= 0",
                           timeout=10_000)
    tip = view.locator(".tip")
    assert tip.is_visible() and "%" in tip.inner_text()
    shaded = page.evaluate("""() => {  // pixels outside the class are dimmed, the class itself is not
        const c = document.querySelector('#hover canvas.shade');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let dim = 0, clear = 0;
        for (let j = 3; j < d.length; j += 4) { if (d[j] > 0) dim++; else clear++; }
        return [dim, clear];
    }""")
    assert shaded[1] > 0 and sum(shaded) == box_pixels(page)
    chip = view.locator(".chip").last
    chip.hover()
    page.wait_for_function("id => document.querySelector('#hover .segdemo-hover').dataset.highlighted === id",
                           arg=chip.get_attribute("data-id"), timeout=10_000)

    # The opacity slider re-blends the overlay without another inference.
    before = page.locator("#overlay img").get_attribute("src")
    number = page.get_by_label("number input for Overlay opacity")
    number.fill("1")
    number.press("Enter")
    page.wait_for_function(
        "before => { const i = document.querySelector('#overlay img'); return i && i.src !== before; }",
        arg=before, timeout=30_000)

    page.get_by_role("tab", name="Profiling").click()
    timeline = page.locator("#timeline .js-plotly-plot")
    timeline.wait_for(state="visible", timeout=30_000)
    bars = page.locator("#timeline .js-plotly-plot g.point")
    assert bars.count() >= 5  # load and inference spans are drawn
    page.screenshot(path=str(os.environ.get("SEGDEMO_PROFILING_SHOT", tmp_path / "profiling.png")), full_page=True)
    lanes = page.locator("#timeline").inner_text()
    assert "load" in lanes and "inference" in lanes


def box_pixels(page) -> int:
    """Pixels of the hover view's class map (its canvas has the display size)."""
    return page.evaluate("(() => { const c = document.querySelector('#hover canvas.shade');"
                         " return c.width * c.height; })()")


def test_engine_tab_shows_ladder(page):
    page.get_by_role("tab", name="Engine").click()
    page.wait_for_function("document.body.innerText.includes('in use')", timeout=60_000)
    text = page.locator("body").inner_text()
    assert "onnxruntime" in text and "Backend ladder" in text and "random weights" in text
    assert "tensorrt-rtx" in text and "skipped" in text  # every skipped backend is listed with its reason


@pytest.mark.slow
def test_engine_tab_builds_a_tensorrt_rtx_plan(page):
    pytest.importorskip("tensorrt_rtx")
    page.get_by_role("tab", name="Engine").click()
    page.get_by_role("button", name="Build / rebuild engine").click()
    # A real ahead-of-time TensorRT-RTX build of the session's graph, with progress shown while it runs.
    page.wait_for_function("document.body.innerText.includes('Built random-tiny-fp16')", timeout=300_000)
    assert ".plan" in page.locator("body").inner_text()


def test_a_public_app_offers_no_engine_build_in_the_page(browser, build_dir, tmp_path):
    """On a Space (or any public bind) the Build button is disabled and the Engine tab says how to allow it."""
    from .conftest import running_app

    with running_app(build_dir, tmp_path / "app.log", env={"SPACE_ID": "test/segdemo"}) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                               " return b && !b.innerText.includes('Starting:'); })()", timeout=300_000)
        page.get_by_role("tab", name="Engine").click()
        page.wait_for_function("document.body.innerText.includes('Engine builds from this page')", timeout=60_000)
        assert "turned off on this public app" in page.locator("body").inner_text()
        assert page.get_by_role("button", name="Build / rebuild engine").is_disabled()
        page.close()
