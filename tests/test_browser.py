"""A real browser (Debian's Chromium driven by Playwright) uses the app as a person would."""

from __future__ import annotations

import os
import shutil

import pytest

from .conftest import tensorrt_runs_here

CHROMIUM = os.environ.get("SEGDEMO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory):
    """What Chromium's fake webcam plays, looped: 1 s of a panned photo at 640×480 (a webcam's usual size)."""
    from segdemo.bench.clips import write_y4m

    return write_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m", 640, 480, 30)


@pytest.fixture(scope="module")
def browser(fake_camera):
    """One Chromium for the module (a second sync Playwright in the same process fails), started with a fake webcam
    that plays `fake_camera` and grants camera access without asking; pages that never ask for it are unaffected."""
    playwright = pytest.importorskip("playwright.sync_api")
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={fake_camera}"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + camera)
        yield browser
        browser.close()


def open_app(browser, url):
    """A fresh page of the app once its start-up banner is gone."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                           " return b && !b.innerText.includes('Starting:'); })()", timeout=300_000)
    return page


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
    """Upload → Segment → the result view (tests/test_page.py covers its interaction) → the Profiling timeline."""
    page.locator("input[type=file]").first.set_input_files(str(photo_file))
    page.get_by_role("button", name="Segment", exact=True).click()
    page.locator("#overlay .segdemo-view[data-ready='1']").wait_for(timeout=120_000)
    chips = page.locator("#overlay .chip")
    assert chips.count() >= 1 and "%" in chips.first.inner_text()
    page.locator("#status").get_by_text("onnxruntime").wait_for(timeout=30_000)
    assert "random weights" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "segment.png"), full_page=True)

    page.get_by_role("tab", name="Profiling").click()
    timeline = page.locator("#timeline .js-plotly-plot")
    timeline.wait_for(state="visible", timeout=30_000)
    bars = page.locator("#timeline .js-plotly-plot g.point")
    assert bars.count() >= 5  # load and inference spans are drawn
    page.screenshot(path=str(os.environ.get("SEGDEMO_PROFILING_SHOT", tmp_path / "profiling.png")), full_page=True)
    lanes = page.locator("#timeline").inner_text()
    assert "load" in lanes and "inference" in lanes


def test_engine_tab_shows_ladder(page):
    """The session's facts; the ladder folded in a closed accordion; build controls only where a TensorRT flavour runs,
    else one sentence saying what builds need."""
    from segdemo.web.engine_page import NO_BUILDS

    page.get_by_role("tab", name="Engine").click()
    page.wait_for_function("document.querySelector('#engine').innerText.includes('random weights')", timeout=60_000)
    text = page.locator("body").inner_text()
    assert "onnxruntime" in text and "Backends tried, in order" in text
    assert "skipped" not in text and "in use" not in text  # the ladder is folded away until asked for
    build = page.get_by_role("button", name="Build / rebuild engine")
    if tensorrt_runs_here():
        assert build.is_enabled() and page.get_by_text("Engine precision").is_visible() and NO_BUILDS not in text
    else:
        assert NO_BUILDS in page.locator("#engine").inner_text()
        assert build.count() == 0 and not page.get_by_text("Engine precision").is_visible()  # hidden, not disabled
    page.get_by_text("Backends tried, in order").click()
    page.wait_for_function("document.body.innerText.includes('in use')", timeout=30_000)
    text = page.locator("body").inner_text()
    assert "tensorrt-rtx" in text and "skipped" in text  # every skipped backend is listed with its reason
    page.get_by_text("Backends tried, in order").click()  # folded again for the tests that follow


@pytest.mark.slow
def test_engine_tab_builds_a_tensorrt_rtx_plan(page):
    pytest.importorskip("tensorrt_rtx")
    if not tensorrt_runs_here():
        pytest.skip("no TensorRT flavour can run here, so the page offers no builds (`segdemo build` still does)")
    page.get_by_role("tab", name="Engine").click()
    page.get_by_role("button", name="Build / rebuild engine").click()
    # A real TensorRT-RTX build of the session's graph, with progress shown while it runs.
    page.wait_for_function("document.body.innerText.includes('Built random-tiny-fp16')", timeout=300_000)
    assert ".plan" in page.locator("body").inner_text()


def test_a_public_app_offers_no_engine_build_in_the_page(browser, build_dir, tmp_path):
    """On a Space (or any public bind) no build button works: disabled, with how to allow it, where a TensorRT flavour
    runs; elsewhere not there at all, the tab saying what builds need."""
    from segdemo.web.engine_page import NO_BUILDS

    from .conftest import running_app

    with running_app(build_dir, tmp_path / "app.log", env={"SPACE_ID": "test/segdemo"}) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                               " return b && !b.innerText.includes('Starting:'); })()", timeout=300_000)
        page.get_by_role("tab", name="Engine").click()
        page.wait_for_function("document.querySelector('#engine').innerText.includes('random weights')",
                               timeout=60_000)
        text = page.locator("#engine").inner_text()
        build = page.get_by_role("button", name="Build / rebuild engine")
        if tensorrt_runs_here():
            assert "turned off on this public app" in text and build.is_disabled()
        else:
            assert NO_BUILDS in text and build.count() == 0
        page.close()


def test_live_tab_streams_the_fake_webcam_into_overlay_frames(app_url, browser, tmp_path):
    page = open_app(browser, app_url)
    page.get_by_role("tab", name="Live").click()
    page.get_by_text("Click to Access Webcam").click()
    record = page.locator("#camera button[aria-label='capture photo']")
    record.click()  # starts the stream (the button then reads "Stop")
    page.wait_for_function("(() => { const i = document.querySelector('#live-overlay img');"
                           " return i && i.src.startsWith('data:image/jpeg'); })()", timeout=120_000)
    first = page.locator("#live-overlay img").get_attribute("src")
    page.wait_for_function("first => document.querySelector('#live-overlay img').src !== first", arg=first,
                           timeout=60_000)  # the overlay keeps updating: new frames, not one picture
    page.wait_for_function("(() => { const m = document.querySelector('#live-readout').innerText.match("
                           "/([0-9.]+) fps/); return m && Number(m[1]) > 0; })()", timeout=60_000)
    readout = page.locator("#live-readout").inner_text()
    assert "frame latency p50" in readout and "640×480" in readout and "onnxruntime" in readout
    natural = page.evaluate("(() => { const i = document.querySelector('#live-overlay img');"
                            " return [i.naturalWidth, i.naturalHeight]; })()")
    assert natural == [640, 480]
    page.screenshot(path=str(tmp_path / "live.png"))
    page.get_by_role("tab", name="Profiling").click()
    page.locator("#live-chart .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    assert page.locator("#live-chart g.trace.bars").count() >= 3  # one stacked series per span
    page.get_by_role("tab", name="Live").click()
    assert record.inner_text().strip() == "Stop"
    record.click()
    page.close()


def test_video_tab_returns_a_playable_mp4_and_the_share_chart(app_url, browser, tmp_path):
    import urllib.request

    av = pytest.importorskip("av")
    from segdemo.bench.clips import make_clip

    clip = make_clip(tmp_path / "clip.mp4", 320, 240, 1.0, fps=10)
    page = open_app(browser, app_url)
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-in input[type=file]").set_input_files(str(clip))
    page.locator("#video-in video").wait_for(timeout=30_000)  # uploaded: the input shows its preview
    page.get_by_role("button", name="Segment video").click()
    page.wait_for_function("(() => { const v = document.querySelector('#video-out video');"
                           " return v && v.readyState >= 1 && v.duration > 0; })()", timeout=180_000)
    duration, width, src = page.evaluate("(() => { const v = document.querySelector('#video-out video');"
                                         " return [v.duration, v.videoWidth, v.currentSrc]; })()")
    assert duration == pytest.approx(1.0, abs=0.15) and width == 320  # Chromium decoded it: H.264 MP4 plays
    page.locator("#share-chart .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    assert "10 frames" in page.locator("#video-status").inner_text()
    served = tmp_path / "served.mp4"
    served.write_bytes(urllib.request.urlopen(src, timeout=30).read())
    with av.open(str(served)) as container:
        assert "mp4" in container.format.name and container.streams.video[0].codec_context.name == "h264"
    # Not a video: one sentence in an error toast, and the page keeps working.
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is not a video")
    page.locator("#video-in button[aria-label='Clear']").first.click()
    page.locator("#video-in input[type=file]").set_input_files(str(bad))
    page.get_by_role("button", name="Segment video").click()
    page.wait_for_function("document.body.innerText.includes(\"'holiday.mp4' is not a video file FFmpeg can read\")",
                           timeout=60_000)
    page.close()


def test_two_visitors_use_the_app_through_the_front_ends_proxy(browser, build_dir, photo_file, tmp_path):
    """`--front-ends 2`: each browser visitor is pinned to one copy by HAProxy's cookie, and everything a page does —
    upload, the queue's event stream, the follow-up step, re-blending from gr.State, the files — works through it."""
    from segdemo.serving.haproxy import COOKIE

    from .conftest import running_app
    from .test_frontends import _haproxy, _wait_for, routed

    if _haproxy() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy): --front-ends above 1 serves through it")

    log = tmp_path / "app.log"
    with running_app(build_dir, log, "--front-ends", "2", "--backend", "onnxruntime") as url:
        _wait_for(log, routed, 180)
        pins = []
        for visitor in range(2):
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                                   " return b && !b.innerText.includes('Starting:'); })()", timeout=300_000)
            page.locator("input[type=file]").first.set_input_files(str(photo_file))
            page.get_by_role("button", name="Segment", exact=True).click()
            page.locator("#overlay .segdemo-view[data-ready='1']").wait_for(timeout=120_000)  # the follow-up too
            before = page.locator("#overlay img.after").get_attribute("src")
            number = page.get_by_label("number input for Overlay opacity")  # re-blends from this visitor's gr.State
            number.fill("1")
            number.press("Enter")
            page.wait_for_function(  # the re-blended overlay is downloaded and decoded through the proxy too
                "before => { const i = document.querySelector('#overlay img.after');"
                " return i && i.getAttribute('src') !== before && i.complete && i.naturalWidth > 0; }", arg=before,
                timeout=30_000)
            (cookie,) = [c for c in context.cookies() if c["name"] == COOKIE]
            pins.append(cookie["value"].split(".")[0])
            page.screenshot(path=str(tmp_path / f"visitor-{visitor}.png"), full_page=True)
            context.close()
        assert sorted(pins) == ["0", "1"], f"the two visitors should be spread over both front ends: {pins}"
