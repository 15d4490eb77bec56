"""Live frames: latest-frame-wins (unit test with a slow stand-in engine), rolling stats, the frame size limit, the
real model, and a real browser whose camera is larger than the page asks for."""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from segdemo.media.live import LIVE_SIZE, FrameSize, LiveStats, LiveStream, LiveStreams, frame_size, live_chart
from segdemo.profiling.spans import INFERENCE, SpanRecorder


class SlowSession:
    """Stands in for Session in the dropping-logic test only: each frame takes `seconds` in the "engine"."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.seen, self.concurrent, self._running = seconds, [], 0, 0
        self._lock = threading.Lock()

    def segment(self, rgb, spans, record=True):
        rgb = np.asarray(rgb)
        assert record is False  # live frames stay out of the session's request history
        with self._lock:
            self._running += 1
            self.concurrent = max(self.concurrent, self._running)
        with spans.span("execute", INFERENCE):
            time.sleep(self.seconds)
        with self._lock:
            self._running -= 1
            self.seen.append(int(rgb[0, 0, 0]))
        return _Result(rgb)


class _Result:
    def __init__(self, rgb):
        self.rgb = rgb
        self.class_map = rgb[..., 0]

    def display_overlay(self, opacity):
        return self.rgb


def frame(k: int) -> np.ndarray:
    return np.full((24, 32, 3), k, np.uint8)


def test_a_newer_frame_replaces_the_waiting_one_and_nothing_queues():
    session = SlowSession(0.3)
    stream = LiveStream(session)
    results: dict[int, object] = {}
    returned_at: dict[int, float] = {}

    def send(k):
        results[k] = stream.offer(frame(k))
        returned_at[k] = time.perf_counter()

    threads = []
    start = time.perf_counter()
    for k in range(1, 6):  # frame 1 goes into the engine; 2, 3, 4 each wait until the next one replaces them
        threads.append(threading.Thread(target=send, args=(k,)))
        threads[-1].start()
        time.sleep(0.04)
    for t in threads:
        t.join()
    assert session.seen == [1, 5]  # the first frame, then the newest one: never the ones in between
    assert session.concurrent == 1
    assert [k for k, r in sorted(results.items()) if r is None] == [2, 3, 4]
    # A replaced frame returns as soon as the next one arrives, not after the engine's 0.3 s.
    for k in (2, 3, 4):
        assert returned_at[k] - start < 0.3
    assert stream.stats.frames == 2 and stream.stats.dropped == 3
    assert results[5].jpeg[:2] == b"\xff\xd8" and results[5].latency_ms >= 300


def test_a_frame_arriving_when_the_engine_is_free_goes_straight_in():
    session = SlowSession(0.0)
    stream = LiveStream(session)
    for k in range(1, 4):
        assert stream.offer(frame(k)) is not None
    assert session.seen == [1, 2, 3] and stream.stats.dropped == 0


def test_stats_fps_latency_and_window():
    stats = LiveStats(window_s=10.0)
    spans = SpanRecorder()
    with spans.span("execute", INFERENCE):
        pass
    for _ in range(5):
        stats.add(20.0, spans, (480, 640))
        time.sleep(0.05)
    assert 10 < stats.fps() < 25  # 4 intervals of ~0.05 s
    assert stats.latency() == (20.0, 20.0)
    assert stats.fps(now=time.perf_counter() + 60) == 0.0  # frames older than the window no longer count
    text = stats.readout("random:tiny on onnxruntime (cpu, fp32)")
    assert text.startswith("640×480 frames · random:tiny on onnxruntime (cpu, fp32) · **")
    assert "fps" in text and "p95 20 ms" in text and "5 frames" in text and "scaled" not in text
    names, rows = stats.span_history()
    assert names == ["execute"] and len(rows) == 5
    assert stats.chart_due() and not stats.chart_due()  # at most once a second
    assert len(live_chart(stats).data) == 1
    stats.add(20.0, spans, (480, 640), sent=(1440, 1920))
    assert stats.readout().startswith("640×480 frames (sent at 1920×1440, scaled down) · **")


def test_streams_are_per_visitor_and_bounded():
    streams, session = LiveStreams(keep=2), SlowSession(0)
    a = streams.get("a", session)
    assert streams.get("a", session) is a and streams.get("b", session) is not a
    streams.get("c", session)
    assert streams.find("a") is None  # the least recently used went first


def test_real_frames_through_the_model(session_factory):
    session = session_factory("random:tiny")
    history_before = len(session.history.summary())
    stream = LiveStream(session)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(buffer, format="JPEG")
    for _ in range(3):
        done = stream.offer(buffer.getvalue(), 0.6)
        assert done is not None
    picture = Image.open(io.BytesIO(done.jpeg))
    assert picture.format == "JPEG" and picture.size == (640, 480)
    assert done.result.class_map.shape == (480, 640)
    names = {s.name for s in done.spans.spans}
    assert {"decode", "execute", "encode frame"} <= names
    assert "classes.png" not in " ".join(names)  # nothing of the image path's downloads per frame
    assert stream.stats.fps() > 0 and stream.stats.frames == 3
    assert len(session.history.summary()) == history_before  # frames stay out of the request history


def test_a_bad_frame_is_a_clear_error(session_factory):
    from segdemo.errors import SegdemoError

    with pytest.raises(SegdemoError, match="not an image"):
        LiveStream(session_factory("random:tiny")).offer(b"not a jpeg")


def test_frame_sizes_are_written_wxh_and_fit_either_way_round():
    assert frame_size("640x480") == LIVE_SIZE and frame_size(" 1280×720 ") == FrameSize(1280, 720)
    assert str(FrameSize(320, 240)) == "320x240" and frame_size(str(FrameSize(320, 240))) == FrameSize(320, 240)
    for bad in ("640", "640x", "x480", "axb", "640*480", "-640x480", "32x480"):
        with pytest.raises(ValueError, match="640x480|at least 64x64"):
            frame_size(bad)
    box = LIVE_SIZE
    assert box.fit((1440, 1920)) == (480, 640) and box.fit((1080, 1920)) == (360, 640)
    assert box.fit((1920, 1440)) == (640, 480)  # portrait: the box turns with the frame
    assert box.fit((480, 640)) == (480, 640) and box.fit((640, 480)) == (640, 480) and box.fit((24, 32)) == (24, 32)


def _jpeg(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(height).integers(0, 255, (height, width, 3), np.uint8)
    Image.fromarray(rgb).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_frames_larger_than_the_limit_are_scaled_down_before_the_model(session_factory):
    """A client that ignores the page's ask and sends 1920×1440 frames: the model sees 640×480 ones."""
    stream = LiveStream(session_factory("random:tiny"), max_size=LIVE_SIZE)
    for (height, width), expected in (((1440, 1920), (480, 640)), ((1920, 1440), (640, 480)),
                                      ((1080, 1920), (360, 640))):
        done = stream.offer(_jpeg(height, width))
        assert done is not None and done.result.class_map.shape == expected
        assert Image.open(io.BytesIO(done.jpeg)).size == expected[::-1]
        (scale,) = [s for s in done.spans.spans if s.name == "scale down frame"]
        assert scale.attrs["size"] == [height, width] and scale.attrs["to"] == list(expected)
    assert "(sent at 1920×1080, scaled down)" in stream.stats.readout()
    done = stream.offer(_jpeg(480, 640))  # one that fits goes to the session as sent, undecoded
    assert done is not None and done.result.class_map.shape == (480, 640)
    assert "scale down frame" not in {s.name for s in done.spans.spans}
    assert stream.stats.readout().startswith("640×480 frames · ")


@pytest.fixture(scope="module")
def big_camera_browser(tmp_path_factory):
    """Chromium whose fake webcam plays 1920×1440 frames (larger than the page asks for), granted without asking."""
    from segdemo.bench.clips import write_y4m

    from .test_browser import CHROMIUM, FLAGS

    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    camera = write_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m", 1920, 1440, 10, fps=10)
    flags = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-video-capture={camera}"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + flags)
        yield browser
        browser.close()


def test_a_large_camera_streams_frames_of_the_live_size(app_url, big_camera_browser):
    """The page asks the camera for 640×480 (the default --live-size): the frames reach the server at that size."""
    from .test_browser import open_app

    page = open_app(big_camera_browser, app_url)
    page.get_by_role("tab", name="Live").click()
    assert "Frames are 640×480 at most" in page.locator("body").inner_text()
    page.get_by_text("Click to Access Webcam").click()
    record = page.locator("#camera button[aria-label='capture photo']")
    record.click()
    page.wait_for_function("(() => { const m = document.querySelector('#live-readout').innerText.match("
                           "/([0-9.]+) fps/); return m && Number(m[1]) > 0; })()", timeout=120_000)
    readout = page.locator("#live-readout").inner_text()
    # The server segmented 640×480 frames, sent at that size: the browser scaled its camera's 1920×1440 down.
    assert "640×480 frames · random:tiny on onnxruntime (cpu, int8) · " in readout and "sent at" not in readout
    natural = page.evaluate("(() => { const i = document.querySelector('#live-overlay img');"
                            " return [i.naturalWidth, i.naturalHeight]; })()")
    assert natural == [640, 480]
    record.click()
    page.close()
