"""Live frames: latest-frame-wins (unit test with a slow stand-in engine), rolling stats, and the real model."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from segdemo.media.live import LiveStats, LiveStream, LiveStreams, live_chart
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
    text = stats.readout("onnxruntime (cpu, fp32)")
    assert "fps" in text and "p95 20 ms" in text and "640×480" in text and "5 frames" in text
    names, rows = stats.span_history()
    assert names == ["execute"] and len(rows) == 5
    assert stats.chart_due() and not stats.chart_due()  # at most once a second
    assert len(live_chart(stats).data) == 1


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
