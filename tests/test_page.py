"""The Segment tab as a visitor meets it, in Chromium at desktop and phone sizes: one screen, keyboard and touch,
several classes hidden at once, examples that run on click (cached), no layout jump, and axe-core's checks."""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.image.visuals import read_class_map

from .test_browser import CHROMIUM, FLAGS

AXE = Path(__file__).resolve().parent.parent / "build" / "node" / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {"desktop": {"viewport": {"width": 1280, "height": 900}},
         "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                   "has_touch": True}}
VIEW = "#overlay .segdemo-view"
READY = f"{VIEW}[data-ready='1']"
TABS = ("Segment", "Live", "Video", "Profiling", "Engine")

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def visit(browser, url: str, size: str):
    """A new visitor's page (own cookies and session) at `size`, once the model is loaded."""
    context = browser.new_context(**SIZES[size])
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                           " return b && !b.innerText.includes('Starting:'); })()", timeout=300_000)
    page.locator(VIEW).wait_for(timeout=60_000)
    # Every layout shift from now on (Chromium's Layout Instability API), whether or not input preceded it.
    page.evaluate("window.shifts = []; new PerformanceObserver(list => list.getEntries().forEach("
                  "e => window.shifts.push(e.value))).observe({type: 'layout-shift'})")
    return page


def click_example(page, index: int = 0) -> None:
    page.locator("#examples .gallery-item").nth(index).click()
    page.locator(READY).wait_for(timeout=120_000)
    page.locator("#downloads a").first.wait_for(timeout=60_000)


def inside(page, locator) -> bool:
    """Whether the element is wholly inside the viewport as the page stands (no scrolling)."""
    box = locator.bounding_box()
    size = page.viewport_size
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size["width"] + 0.5
            and box["y"] + box["height"] <= size["height"] + 0.5)


def class_ids(page) -> np.ndarray:
    """The class id of every pixel the view shows, from the palette PNG its script reads."""
    url = page.locator(VIEW).get_attribute("data-classes")
    return read_class_map(io.BytesIO(page.request.get(page.url + url).body()))


def canvas_alpha(page, name: str) -> list[int]:
    """(pixels with alpha > 0, pixels with alpha 0) of the view's `name` canvas."""
    return page.evaluate("name => { const c = document.querySelector('#overlay canvas.' + name);"
                         " if (!c.width) return [0, 0]; const d = c.getContext('2d').getImageData(0, 0, c.width,"
                         " c.height).data; let on = 0; for (let j = 3; j < d.length; j += 4) if (d[j] > 0) on++;"
                         " return [on, c.width * c.height - on]; }", name)


def ids_of(page, attribute: str) -> set[int]:
    value = page.locator(VIEW).get_attribute(f"data-{attribute}") or ""
    return {int(v) for v in value.split(",") if v}


def assert_one_screen(page, size: str) -> None:
    """The picture and its top classes (on a desktop also the opacity slider and every download) need no scrolling,
    and nothing jumped while the result came in."""
    chips = page.locator(f"{VIEW} .chips li:not(.extra)")
    assert 1 <= chips.count() <= 8 and page.locator(f"{VIEW} .chips li").count() >= chips.count()
    shown = [page.locator(f"{VIEW} .stage"), *(chips.nth(k) for k in range(chips.count()))]
    if size == "desktop":  # and the controls beside the result: opacity, every download
        shown += [page.get_by_label("range slider for Overlay opacity"),
                  page.get_by_role("button", name="Full-size overlay (PNG)"),
                  *(page.locator("#downloads a").nth(k) for k in range(page.locator("#downloads a").count()))]
    outside = [locator for locator in shown if not inside(page, locator)]
    assert not outside, f"{len(outside)} of {len(shown)} parts of the result need scrolling at {size} size"
    shift = page.evaluate("window.shifts.reduce((a, b) => a + b, 0)")
    assert shift < 0.05, f"the page jumped while the result came in (cumulative layout shift {shift:.3f})"
    height = page.evaluate("document.documentElement.scrollHeight")
    print(f"{size}: page height after a result {height} px, layout shift {shift:.4f}")


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_an_example_runs_on_click_and_a_result_fits_one_screen(browser, app_url, photo_file, size):
    page = visit(browser, app_url, size)
    click_example(page)  # no Segment press: the example runs (or comes from the cache) on its own
    assert_one_screen(page, size)
    page.evaluate("window.scrollTo(0, 0); window.shifts = []")  # then a visitor's own photo, from the top
    before = page.locator(VIEW).get_attribute("data-classes")
    page.locator("input[type=file]").first.set_input_files(str(photo_file))
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_function("before => { const v = document.querySelector('#overlay .segdemo-view');"
                           " return v.dataset.ready === '1' && v.dataset.classes !== before; }", arg=before,
                           timeout=120_000)
    page.locator("#downloads a").first.wait_for(timeout=60_000)
    page.wait_for_timeout(300)  # the view scrolls itself into place in the next frame
    assert_one_screen(page, size)
    page.context.close()


def test_keyboard_highlights_several_classes_and_hides_and_isolates_them(browser, app_url):
    page = visit(browser, app_url, "desktop")
    click_example(page, 1)
    ids = class_ids(page)
    chips = page.locator(f"{VIEW} .chip")
    first, second = int(chips.nth(0).get_attribute("data-id")), int(chips.nth(1).get_attribute("data-id"))
    # Keyboard only: focus the first chip, Enter; Tab past its "hide" button to the second chip, Space.
    chips.nth(0).focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.id") == str(second)
    page.keyboard.press("Space")
    page.wait_for_function(f"document.querySelector('{VIEW}').dataset.highlighted === '{first},{second}'")
    assert chips.nth(0).get_attribute("aria-pressed") == "true" == chips.nth(1).get_attribute("aria-pressed")
    dimmed, clear = canvas_alpha(page, "shade")
    assert clear == int(np.isin(ids, [first, second]).sum()) and dimmed == ids.size - clear

    # Hide two other classes at once: the photo shows through exactly their pixels (no request reruns the model).
    hides = page.locator(f"{VIEW} .hide")
    third, fourth = (int(hides.nth(k).get_attribute("data-id")) for k in (2, 3))
    hides.nth(2).click()
    hides.nth(3).click()
    assert ids_of(page, "hidden") == {third, fourth}
    expected = int(np.isin(ids, [third, fourth]).sum())
    page.wait_for_function("n => { const c = document.querySelector('#overlay canvas.reveal'); if (!c.width) return"
                           " false; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                           " let on = 0; for (let j = 3; j < d.length; j += 4) if (d[j] === 255) on++;"
                           " return on === n; }", arg=expected, timeout=30_000)
    assert hides.nth(2).get_attribute("aria-pressed") == "true"

    # Isolate the two highlighted classes: every other class is hidden.
    page.get_by_role("button", name="Only highlighted").click()
    present = {int(c) for c in np.unique(ids) if c >= 0}
    assert ids_of(page, "hidden") == present - {first, second}
    page.get_by_role("button", name="Clear selection").click()
    assert ids_of(page, "hidden") == set() and ids_of(page, "highlighted") == set()

    # Before/after: the overlay is clipped to show the photo on the left part.
    page.locator(f"{VIEW} input.compare").fill("40")
    assert page.locator(VIEW).evaluate("e => e.style.getPropertyValue('--cut')") == "40%"
    page.context.close()


def test_a_tap_pins_the_class_under_the_finger(browser, app_url):
    page = visit(browser, app_url, "phone")
    click_example(page, 2)
    ids = class_ids(page)
    stage = page.locator(f"{VIEW} .stage")
    box = stage.bounding_box()
    x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6
    expected = int(ids[int(0.6 * ids.shape[0]), int(0.3 * ids.shape[1])])
    page.touchscreen.tap(x, y)
    page.wait_for_function(f"document.querySelector('{VIEW}').dataset.highlighted === '{expected}'",
                           timeout=10_000)
    assert page.locator(f"{VIEW} .chip[data-id='{expected}']").get_attribute("aria-pressed") == "true"
    page.touchscreen.tap(x, y)  # a second tap lets it go
    page.wait_for_function(f"document.querySelector('{VIEW}').dataset.highlighted === ''", timeout=10_000)
    page.context.close()


def test_segment_reblend_and_full_size_download(browser, app_url, photo_file):
    page = visit(browser, app_url, "desktop")
    page.locator("input[type=file]").first.set_input_files(str(photo_file))
    page.get_by_role("button", name="Segment", exact=True).click()
    page.locator(READY).wait_for(timeout=120_000)
    status = page.locator("#status").inner_text()
    assert "onnxruntime" in status and "random weights" in status
    before = page.locator(f"{VIEW} img.after").get_attribute("src")
    number = page.get_by_label("number input for Overlay opacity")
    number.fill("1")
    number.press("Enter")  # re-blended on the server from the kept result, painted into the same picture
    page.wait_for_function("before => { const i = document.querySelector('#overlay img.after');"
                           " return i.getAttribute('src') !== before && i.complete && i.naturalWidth > 0; }",
                           arg=before, timeout=30_000)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Full-size overlay (PNG)").click()
    with Image.open(download.value.path()) as full:
        assert full.format == "PNG" and full.size == Image.open(photo_file).size
    page.context.close()


def test_examples_come_from_the_cache_and_a_closed_tab_leaves_no_files(browser, build_dir, tmp_path):
    from .conftest import running_app

    log = tmp_path / "app.log"

    def inferences() -> int:
        return len(re.findall(r"infer time:", log.read_text(errors="replace")))

    with running_app(build_dir, log) as url:
        first = visit(browser, url, "desktop")
        click_example(first, 3)
        made = inferences()
        assert made >= 1
        second = visit(browser, url, "desktop")  # another visitor, another session
        click_example(second, 3)
        assert inferences() == made, "the example ran the model again instead of coming from the cache"
        assert first.locator(f"{VIEW} img.after").get_attribute("width") == \
            second.locator(f"{VIEW} img.after").get_attribute("width")
        root = Path(re.search(r"visitors' files in (\S+)", log.read_text()).group(1))
        visitors = [p for p in root.iterdir() if p.name != "examples"]
        assert len(visitors) == 2  # each visitor's folder (the example's files are shared, in examples/)
        first.context.close()
        second.context.close()
        deadline = time.time() + 30
        while any(p.exists() for p in visitors) and time.time() < deadline:
            time.sleep(0.25)
        assert not any(p.exists() for p in visitors), "closing the tab should remove the visitor's files"
    assert list((Path(build_dir) / "examples-cache").rglob("*.csv")), "Gradio's example cache was not written"


@pytest.mark.skipif(not AXE.is_file(), reason=f"axe-core is not installed at {AXE} (.ci/run installs it: npm "
                    "install --prefix build/node axe-core@4.14.1)")
def test_axe_core_finds_nothing_serious_on_any_tab(browser, app_url):
    found = {}
    for size in SIZES:
        page = visit(browser, app_url, size)
        click_example(page)
        for tab in TABS:
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(500)
            page.add_script_tag(path=str(AXE))
            violations = page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
                                       "v => [v.id, v.impact, v.nodes.length, v.nodes[0].target.join(' ')]))")
            serious = [v for v in violations if v[1] in ("serious", "critical")]
            if serious:
                found[f"{size}/{tab}"] = serious
        page.context.close()
    assert not found, f"axe-core's serious or critical violations: {found}"
