"""Video files through PyAV (FFmpeg's libraries, bundled in its wheel, libx264 included): a visitor's file is
probed and decoded in a child process (`video_child`), as the format it is, within the limits (`video_limits`); the
overlay is encoded here (H.264 MP4)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..profiling.spans import INFERENCE, SpanRecorder
from .video_child import DecoderProcess
from .video_decode import av_module
from .video_limits import (
    APP_LIMITS,
    CLI_LIMITS,
    VIDEO_SUFFIXES,
    BadVideoError,
    VideoFormat,
    VideoInfo,
    VideoLimits,
    is_video_path,
)

__all__ = ["APP_LIMITS", "CLI_LIMITS", "FAST_PRESET", "PRESET", "VIDEO_SUFFIXES", "BadVideoError", "DecoderProcess",
           "Encoder", "VideoFormat", "VideoInfo", "VideoLimits", "av_module", "even_size", "frames", "is_video_path",
           "open_video", "probe", "write_mp4"]

log = logging.getLogger("segdemo")

CRF = 20  # x264 quality: visually clean overlays at a few Mbit/s
PRESET = "veryfast"  # x264 speed where the engine is the slower stage (CPU backends): the smaller file
# Where the encoder must keep up with a GPU engine: about twice veryfast's frames a second at a third more bytes
# (docs/benchmarks.md, x264 presets).
FAST_PRESET = "superfast"


def open_video(path: str | Path, limits: VideoLimits = APP_LIMITS, mode: str = "decode") -> DecoderProcess:
    """A decoder child for `path` (`mode`: see video_child.MODES), its probe read (`.info`); BadVideoError (one
    sentence) when it cannot be used.

    The cheap checks (exists, size, suffix) come first, in this process; FFmpeg only ever runs in the child.
    """
    av_module()  # a missing PyAV is said here, not as a child's crash
    path = Path(path)
    name = f"'{path.name}'"
    if not path.is_file():
        raise BadVideoError(f"{name} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise BadVideoError(f"{name} is empty (0 bytes)")
    if size > limits.bytes:
        raise BadVideoError(f"{name} is {size / 2**20:.0f} MB; videos are limited to {limits.bytes / 2**20:.0f} MB")
    limits.check_suffix(path)
    return DecoderProcess(path, limits, mode)


def probe(path: str | Path, limits: VideoLimits = APP_LIMITS) -> VideoInfo:
    """Check the file against `limits` (in a decoder child) and say what it holds; BadVideoError when unusable."""
    with open_video(path, limits, mode="probe") as child:
        return child.info


def frames(path: str | Path, info: VideoInfo | None = None, limits: VideoLimits = APP_LIMITS) -> Iterator[np.ndarray]:
    """Upright RGB frames from a decoder child (`info` is re-read there); BadVideoError when the file stops being
    decodable, has none, or goes past `limits` whatever its metadata said."""
    with open_video(path, limits) as child:
        yield from child.frames()


def even_size(height: int, width: int) -> tuple[int, int]:
    """H.264 in 4:2:0 (what every browser plays) needs even sides: an odd last row or column is dropped."""
    return max(2, height - height % 2), max(2, width - width % 2)



class Encoder(threading.Thread):
    """Encodes overlays (lists of frames from a queue: RGB H×W×3, or I420 (H·3/2)×W as the device made them) into
    the container's H.264 stream."""

    def __init__(self, container: Any, fps: Fraction, spans: SpanRecorder, pending: queue.Queue,
                 errors: list[BaseException], preset: str = PRESET) -> None:
        super().__init__(name="video encode", daemon=True)
        self.container, self.fps, self.spans, self.pending, self.errors = container, fps, spans, pending, errors
        self.preset = preset
        self.stream: Any = None
        self.count = 0

    def run(self) -> None:
        av = av_module()
        try:
            while (pictures := self.pending.get()) is not None:
                if self.errors:
                    continue  # drain; the caller is stopping
                with self.spans.span("encode", INFERENCE, frames=len(pictures)):
                    for picture in pictures:
                        planar = picture.ndim == 2  # I420: no conversion here
                        if self.stream is None:
                            height = picture.shape[0] * 2 // 3 if planar else picture.shape[0]
                            self.stream = self._open(height, picture.shape[1])
                        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture),
                                                           format="yuv420p" if planar else "rgb24")
                        frame.pts = self.count
                        self.count += 1
                        self.container.mux(self.stream.encode(frame))
            if self.stream is not None and not self.errors:
                with self.spans.span("encode", INFERENCE, frames=0, flush=True):
                    self.container.mux(self.stream.encode(None))
        except BaseException as exc:  # noqa: BLE001 — handed to the caller's thread
            self.errors.append(exc)
            while self.pending.get() is not None:
                pass

    def _open(self, height: int, width: int) -> Any:
        stream = self.container.add_stream("libx264", rate=self.fps,
                                           options={"crf": str(CRF), "preset": self.preset})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / self.fps
        # Frame threads, not libavcodec's default slice threads: x264 encodes faster (docs/benchmarks.md), at a few
        # frames of latency that a file does not mind.
        stream.codec_context.thread_type = "FRAME"
        return stream


def write_mp4(path: Path, pictures: Iterator[np.ndarray], fps: Fraction | int, rotation: int = 0,
              options: dict[str, str] | None = None) -> Path:
    """RGB frames → an H.264 MP4 at `fps` (what the encoder thread writes, synchronously; tests and benchmarks).

    `rotation` sets the display matrix (degrees counter-clockwise, as phones record portrait video).
    """
    av = av_module()
    with av.open(str(path), "w", options=options or {}) as container:
        stream = None
        for k, picture in enumerate(pictures):
            if stream is None:
                height, width = even_size(*picture.shape[:2])
                stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": str(CRF),
                                                                                      "preset": PRESET})
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[:height, :width]), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        if stream is not None:
            container.mux(stream.encode(None))
    return path
