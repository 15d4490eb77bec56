"""Video files through PyAV (FFmpeg's libraries, bundled in its wheel, libx264 included): limits, probing that
refuses bad input in one sentence, upright RGB frames out, H.264 MP4 in."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SegdemoError
from .optional import require
from .spans import INFERENCE, SpanRecorder

log = logging.getLogger("segdemo")

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".ogv")
STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe")
CRF = 20  # x264 quality: visually clean overlays at a few Mbit/s
PRESET = "veryfast"  # x264 speed: 1080p encodes well above real time on a few cores


class BadVideoError(SegdemoError):
    """The input could not be used as a video, or is beyond the limits."""


@dataclass(frozen=True)
class VideoLimits:
    """What a video may be: the app's defaults are strict (visitors share the engine), the CLI's generous."""

    seconds: float = 60.0
    pixels: int = 1920 * 1080  # per frame: 1080p in either orientation
    side: int = 1920
    bytes: int = 200 * 2**20

    def describe(self) -> str:
        return (f"≤ {self.seconds:g} s, ≤ {self.side} px on the long side and {self.pixels / 1e6:.1f} MP a frame, "
                f"≤ {self.bytes / 2**20:.0f} MB")


APP_LIMITS = VideoLimits()
CLI_LIMITS = VideoLimits(seconds=600.0, pixels=3840 * 2160, side=3840, bytes=2 * 2**30)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream (sizes upright, as the frames are shown)."""

    width: int
    height: int
    fps: Fraction
    seconds: float
    frames: int  # as the container counts them (estimated from duration × rate when it does not say)
    codec: str
    rotation: int = 0
    counted: bool = False  # whether `frames` comes from the container's index (MP4, MOV) rather than an estimate


def av_module() -> Any:
    return require("av", "av", "video files: decoding and H.264 encoding")


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def probe(path: str | Path, limits: VideoLimits = APP_LIMITS) -> VideoInfo:
    """Open the file and check it against `limits`; BadVideoError (one sentence) when it cannot be used."""
    av = av_module()
    path = Path(path)
    name = f"'{path.name}'"
    if not path.is_file():
        raise BadVideoError(f"{name} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise BadVideoError(f"{name} is empty (0 bytes)")
    if size > limits.bytes:
        raise BadVideoError(f"{name} is {size / 2**20:.0f} MB; videos are limited to {limits.bytes / 2**20:.0f} MB")
    try:
        with av.open(str(path)) as container:
            if container.format.name in STILL_FORMATS:
                raise BadVideoError(f"{name} is a still image, not a video — segment it as an image instead")
            if not container.streams.video:
                raise BadVideoError(f"{name} has no video stream (audio only?)")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate or Fraction(25)
            seconds = _seconds(container, stream, fps)
            counted = stream.frames > 0
            frames = stream.frames or round(seconds * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
            rotation = _rotation(container, stream)
            codec = stream.codec_context.name
    except av.error.FFmpegError:
        raise BadVideoError(f"{name} is not a video file FFmpeg can read (not a video, or truncated before its "
                            f"index)") from None
    if rotation % 180:
        width, height = height, width
    if width < 1 or height < 1:
        raise BadVideoError(f"{name} has a video stream without a frame size")
    if seconds > limits.seconds:
        raise BadVideoError(f"{name} is {seconds:.1f} s long; videos are limited to {limits.seconds:g} s")
    if max(width, height) > limits.side or width * height > limits.pixels:
        raise BadVideoError(f"{name} is {width}×{height}; videos are limited to {limits.side} px on the long side "
                            f"and {limits.pixels / 1e6:.1f} MP a frame (1080p)")
    return VideoInfo(width, height, Fraction(fps), seconds, int(frames), codec, rotation, bool(counted))


def _seconds(container: Any, stream: Any, fps: Fraction) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1e6
    return stream.frames / float(fps) if stream.frames else 0.0


def _rotation(container: Any, stream: Any) -> int:
    """The display rotation (degrees counter-clockwise, a multiple of 90) of the first frame, 0 when none."""
    try:
        frame = next(container.decode(stream))
    except (StopIteration, av_module().error.FFmpegError):
        return 0  # no frame to read it from: `frames` says what is wrong
    return int(round((frame.rotation or 0) / 90.0)) * 90 % 360


def frames(path: str | Path, info: VideoInfo) -> Iterator[np.ndarray]:
    """Upright RGB frames; BadVideoError when the file stops being decodable (truncated, damaged) or has none."""
    av = av_module()
    name, count = f"'{Path(path).name}'", 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding 1080p H.264 keeps up with a fast engine
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if info.rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, info.rotation // 90))
                count += 1
                yield rgb
    except av.error.FFmpegError:
        if count == 0:
            raise BadVideoError(f"{name} has no video frames that can be decoded (empty or truncated)") from None
        raise BadVideoError(f"{name} is truncated or damaged: decoding stopped after {count} of about "
                            f"{info.frames} frames") from None
    if count == 0:
        raise BadVideoError(f"{name} has no video frames")
    if info.counted and count < 0.95 * info.frames and info.frames - count >= 2:
        raise BadVideoError(f"{name} is truncated or damaged: only {count} of its {info.frames} frames could be "
                            f"decoded")


def even_size(height: int, width: int) -> tuple[int, int]:
    """H.264 in 4:2:0 (what every browser plays) needs even sides: an odd last row or column is dropped."""
    return max(2, height - height % 2), max(2, width - width % 2)



class Encoder(threading.Thread):
    """Encodes overlays (lists of RGB frames from a queue) into the container's H.264 stream."""

    def __init__(self, container: Any, fps: Fraction, spans: SpanRecorder, pending: queue.Queue,
                 errors: list[BaseException]) -> None:
        super().__init__(name="video encode", daemon=True)
        self.container, self.fps, self.spans, self.pending, self.errors = container, fps, spans, pending, errors
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
                        if self.stream is None:
                            self.stream = self._open(picture.shape[0], picture.shape[1])
                        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
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
                                           options={"crf": str(CRF), "preset": PRESET})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / self.fps
        # Frame threads, not libavcodec's default slice threads: x264 encodes 1080p 1.7× faster on 2 cores (more on
        # many), at a few frames of latency that a file does not mind.
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
