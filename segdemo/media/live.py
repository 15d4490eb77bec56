"""Live frames (a webcam stream): a light per-frame path on top of Session, latest-frame-wins, rolling statistics.

A frame costs: `Session.segment` of the browser's JPEG (decoded on the host, or by nvJPEG on a GPU backend; kept out
of the session's request history) → the display overlay → a JPEG for the page. Nothing else of the image path
(full-size classes.png, hover view, legend table) is made per frame.

Frame size: the page asks the browser's camera for frames of `--live-size` (640×480 unless set; web.config's
webcam_constraints). A frame larger than that which arrives anyway (a camera the browser cannot scale, a client that
ignores the request) is scaled down here, on the host, before the session sees it. The size is a box that applies
either way round, so a portrait camera's 480×640 frames fit 640×480.

Latest-frame-wins: each stream (one visitor's camera) has at most one frame being processed and one waiting. A
frame that arrives while another of its stream is processing takes the waiting place; the frame it replaces is
dropped at once (its caller gets None), so frames never queue up behind a slow engine and what comes out is always
the newest frame the engine could take. Several streams share the session's one engine slot, so each waits for at
most one frame of every other stream.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..image.decode import decode, open_image
from ..image.visuals import DEFAULT_OPACITY, jpeg_bytes
from ..pipeline import Segmentation, Session
from ..profiling.spans import DEVICE_THREAD, INFERENCE, SpanRecorder, percentile

JPEG_QUALITY = 80  # live frames: small and fast to encode (4:2:0); a still result uses the sharper display JPEG
WINDOW_S = 3.0  # fps and latency over the frames finished in the last few seconds
KEEP_FRAMES = 120  # per-frame span durations kept for the rolling chart
PARENT_SPANS = ("request",)  # spans that contain others: left out of the per-frame stacked chart


@dataclass(frozen=True)
class FrameSize:
    """The largest live frame, width × height (written "640x480" on the command line and in SEGDEMO_LIVE_SIZE)."""

    width: int
    height: int

    def __str__(self) -> str:  # what --live-size takes back (front ends get the parent's options as text)
        return f"{self.width}x{self.height}"

    def fit(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of a frame of `size` (height, width) scaled down to fit, either way round; else `size`."""
        if min(size) <= 0:
            return size
        long_side, short_side = max(self.width, self.height), min(self.width, self.height)
        scale = min(1.0, long_side / max(size), short_side / min(size))
        return size if scale == 1.0 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


LIVE_SIZE = FrameSize(640, 480)  # a webcam's usual size: enough for the overlay, cheap to send and decode
MIN_SIDE = 64  # the smallest --live-size side: below it the overlay shows nothing useful


def frame_size(text: str) -> FrameSize:
    """'WxH' (or W×H) → FrameSize, each side at least MIN_SIDE px; ValueError in one sentence otherwise."""
    width, sep, height = text.strip().lower().replace("×", "x").partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(f"a frame size is written WIDTHxHEIGHT (such as 640x480), not {text!r}")
    if min(int(width), int(height)) < MIN_SIDE:
        raise ValueError(f"a live frame must be at least {MIN_SIDE}x{MIN_SIDE} px, not {text!r}")
    return FrameSize(int(width), int(height))


@dataclass
class LiveFrame:
    """One processed frame: the overlay (as a JPEG for the page), its timings and the result behind it."""

    jpeg: bytes
    result: Segmentation
    latency_ms: float  # arrival in `offer` → JPEG ready
    spans: SpanRecorder


@dataclass
class _Done:
    finished: float  # perf_counter seconds
    latency_ms: float
    spans_ms: dict[str, float]


@dataclass
class LiveStats:
    """fps and per-frame latency over a rolling window, frames dropped, and recent frames' span durations."""

    window_s: float = WINDOW_S
    frames: int = 0
    dropped: int = 0
    size: tuple[int, int] | None = None  # (height, width) of the last frame segmented
    sent: tuple[int, int] | None = None  # (height, width) it arrived at, when it was scaled down first
    _done: deque[_Done] = field(default_factory=lambda: deque(maxlen=KEEP_FRAMES))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _charted: float = float("-inf")

    def add(self, latency_ms: float, spans: SpanRecorder, size: tuple[int, int],
            sent: tuple[int, int] | None = None) -> None:
        per_span: dict[str, float] = {}
        for s in spans.spans:
            if s.name not in PARENT_SPANS and s.thread != DEVICE_THREAD:
                per_span[s.name] = per_span.get(s.name, 0.0) + s.duration_ms
        with self._lock:
            self.frames += 1
            self.size, self.sent = size, sent
            self._done.append(_Done(time.perf_counter(), latency_ms, per_span))

    def chart_due(self, every_s: float = 1.0) -> bool:
        """True at most once per `every_s`: the rolling chart is redrawn about once a second, not per frame."""
        now = time.perf_counter()
        with self._lock:
            if now - self._charted < every_s:
                return False
            self._charted = now
            return True

    def drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def recent(self, now: float | None = None) -> list[_Done]:
        now = time.perf_counter() if now is None else now
        with self._lock:
            return [d for d in self._done if now - d.finished <= self.window_s]

    def fps(self, now: float | None = None) -> float:
        """Frames finished per second over the window (0 until two frames are in it)."""
        recent = self.recent(now)
        if len(recent) < 2:
            return 0.0
        elapsed = recent[-1].finished - recent[0].finished
        return (len(recent) - 1) / elapsed if elapsed > 0 else 0.0

    def latency(self, now: float | None = None) -> tuple[float, float] | None:
        """(p50, p95) frame latency in ms over the window."""
        values = [d.latency_ms for d in self.recent(now)]
        return (percentile(values, 50), percentile(values, 95)) if values else None

    def readout(self, engine: str = "") -> str:
        """One line for the page: frame size, what runs them (`engine`), fps, latency, frames replaced by newer ones."""
        fps, latency = self.fps(), self.latency()
        parts = []
        if self.size:
            scaled = f" (sent at {self.sent[1]}×{self.sent[0]}, scaled down)" if self.sent else ""
            parts.append(f"{self.size[1]}×{self.size[0]} frames{scaled}")
        if engine:
            parts.append(engine)
        parts.append(f"**{fps:.1f} fps**")
        if latency:
            parts.append(f"frame latency p50 {latency[0]:.0f} ms · p95 {latency[1]:.0f} ms")
        parts.append(f"{self.frames} frames, {self.dropped} replaced by newer ones")
        return " · ".join(parts)

    def span_history(self) -> tuple[list[str], list[dict[str, float]]]:
        """Span names (largest total first) and per-frame durations of the kept frames, oldest first."""
        with self._lock:
            done = list(self._done)
        totals: dict[str, float] = {}
        for d in done:
            for name, ms in d.spans_ms.items():
                totals[name] = totals.get(name, 0.0) + ms
        return sorted(totals, key=lambda n: -totals[n]), [d.spans_ms for d in done]

    def summary(self) -> dict[str, Any]:
        latency = self.latency()
        return {"fps": round(self.fps(), 2), "frames": self.frames, "dropped": self.dropped,
                "latency_p50_ms": round(latency[0], 2) if latency else None,
                "latency_p95_ms": round(latency[1], 2) if latency else None}


class LiveStream:
    """One camera's frames through the shared session, latest frame wins (see the module's docstring)."""

    def __init__(self, session: Session, window_s: float = WINDOW_S, max_size: FrameSize | None = None) -> None:
        """`max_size`: larger frames are scaled down to fit it before segmentation (None: every frame as sent)."""
        self.session = session
        self.max_size = max_size
        self.stats = LiveStats(window_s)
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: int | None = None  # ticket of the frame waiting for its turn
        self._tickets = 0

    def offer(self, image: Any, opacity: float = DEFAULT_OPACITY) -> LiveFrame | None:
        """Process `image` (JPEG bytes, path or RGB array) unless a newer frame replaces it while it waits.

        Returns None for a frame that was replaced (dropped); otherwise the finished frame.
        """
        arrived = time.perf_counter()
        spans = SpanRecorder()
        if not self._take_turn():
            return None
        try:
            image, sent = self._fitted(image, spans)
            # The session decodes: on the host, or — JPEG bytes on a GPU backend with nvJPEG — on the device.
            result = self.session.segment(image, spans, record=False)
            picture = result.display_overlay(opacity)
            with spans.span("encode frame", INFERENCE, size=list(picture.shape[:2])):
                jpeg = jpeg_bytes(picture, JPEG_QUALITY, subsampling=2)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        latency_ms = (time.perf_counter() - arrived) * 1e3
        self.stats.add(latency_ms, spans, result.class_map.shape[:2], sent)
        return LiveFrame(jpeg, result, latency_ms, spans)

    def _fitted(self, image: Any, spans: SpanRecorder) -> tuple[Any, tuple[int, int] | None]:
        """`image` as it came if it fits `max_size`, else scaled down on the host (with the size it came at)."""
        if self.max_size is None:
            return image, None
        size = _stored_size(image)
        if self.max_size.fit(size) == size:  # the box fits either way round, so EXIF orientation cannot matter
            return image, None
        with spans.span("scale down frame", INFERENCE, size=list(size)) as attrs:
            rgb = decode(image)
            height, width = self.max_size.fit(rgb.shape[:2])
            attrs.update(to=[height, width])
            scaled = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(scaled), (rgb.shape[0], rgb.shape[1])

    def _take_turn(self) -> bool:
        """Wait while this stream's previous frame is processing; False if a newer frame took our place."""
        with self._cond:
            self._tickets += 1
            mine = self._tickets
            if self._waiting is not None:
                self.stats.drop()  # the older waiting frame loses its place to this one
            self._waiting = mine
            self._cond.notify_all()
            while self._busy and self._waiting == mine:
                self._cond.wait()
            if self._waiting != mine:
                return False
            self._waiting = None
            self._busy = True
            return True


def _stored_size(image: Any) -> tuple[int, int]:
    """(height, width) of a frame as stored (an encoded frame's header: nothing is decoded)."""
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    try:
        if isinstance(image, (bytes, bytearray, str, Path)):
            with open_image(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as img:
                return img.height, img.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass
    return 0, 0  # not an image: the session's decoder says what is wrong, in a sentence


class LiveStreams:
    """The streams of the app's visitors, by key (Gradio's session hash); the least recently used go first."""

    def __init__(self, keep: int = 64, max_size: FrameSize | None = None) -> None:
        self._streams: OrderedDict[str, LiveStream] = OrderedDict()
        self._keep = keep
        self._max_size = max_size
        self._lock = threading.Lock()

    def get(self, key: str, session: Session) -> LiveStream:
        with self._lock:
            stream = self._streams.get(key)
            if stream is None or stream.session is not session:
                stream = self._streams[key] = LiveStream(session, max_size=self._max_size)
            self._streams.move_to_end(key)
            while len(self._streams) > self._keep:
                self._streams.popitem(last=False)
            return stream

    def find(self, key: str) -> LiveStream | None:
        with self._lock:
            return self._streams.get(key)


def live_chart(stats: LiveStats) -> Any:
    """The Profiling tab's rolling chart: per-span time of the recent frames."""
    from ..profiling.timeline import live_figure

    names, frames = stats.span_history()
    return live_figure(names, frames, stats.fps())
