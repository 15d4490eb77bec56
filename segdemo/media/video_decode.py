"""FFmpeg's side of reading a video: open it as the file it is (allowed demuxers, `file` protocol only), read what
it claims, then decode upright RGB frames while enforcing the limits. Runs in the decoder child (`video_child`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..optional import require
from .video_limits import BadVideoError, VideoInfo, VideoLimits

STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe")
# What a refused demuxer is, in words, for the formats visitors try to pass off as videos.
REFUSED_NAMES = {"hls": "an HLS playlist", "concat": "a concat list", "image2": "an image sequence pattern",
                 "h264": "a raw H.264 stream", "hevc": "a raw HEVC stream", "dash": "a DASH manifest"}
# Playlists and lists that FFmpeg only takes for one by their suffix: named by their first bytes when refused.
SIGNATURES = {b"#EXTM3U": "hls", b"ffconcat": "concat"}
FRAME_TOLERANCE = 0.02  # frames beyond seconds × rate allowed for rounding in the container's rate


def av_module() -> Any:
    return require("av", "av", "video files: decoding and H.264 encoding")


def open_input(path: Path, limits: VideoLimits) -> Any:
    """The container, opened by FFmpeg's allowed demuxers over the `file` protocol only; BadVideoError otherwise.

    Still-image demuxers are let through here so that a picture gets its own sentence rather than 'not accepted'.
    """
    av = av_module()
    name = f"'{path.name}'"
    whitelist = ",".join([limits.whitelist, *(f for f in STILL_FORMATS if f != "image2")])
    # A `file:` URL: a name with a colon is never taken for another protocol, and the whitelist covers any file
    # or URL a demuxer would open from inside this one.
    options = {"format_whitelist": whitelist, "protocol_whitelist": "file"}
    av.logging.set_level(av.logging.ERROR)
    with av.logging.Capture() as logs:
        try:
            return av.open(f"file:{path.resolve()}", container_options=options)
        except av.error.FFmpegError as exc:
            refused = [source for _, source, text in logs if "not on whitelist" in text] or _signature(path)
            if refused:
                what = REFUSED_NAMES.get(refused[0], f"in FFmpeg's '{refused[0]}' format")
                raise BadVideoError(f"{name} is {what}, not a video file the app accepts: "
                                    f"{limits.accepted()}") from None
            if isinstance(exc, av.error.PermissionError):
                raise BadVideoError(f"{name} asks FFmpeg to read other files, which is not allowed") from None
            raise BadVideoError(f"{name} is not a video file FFmpeg can read (not a video, or truncated before its "
                                f"index)") from None


def _signature(path: Path) -> list[str]:
    with path.open("rb") as fh:
        head = fh.read(16)
    return [fmt for signature, fmt in SIGNATURES.items() if head.startswith(signature)]


def read_info(path: Path, limits: VideoLimits) -> VideoInfo:
    """What the container claims about its first video stream, checked against `limits`."""
    av = av_module()
    name = f"'{path.name}'"
    with open_input(path, limits) as container:
        try:
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
            context = stream.codec_context
            codec, colours = context.name, (context.pix_fmt or "", int(context.colorspace), int(context.color_range))
        except av.error.FFmpegError:
            raise BadVideoError(f"{name} is not a video file FFmpeg can read (not a video, or truncated before its "
                                f"index)") from None
        fmt = container.format.name
    if rotation % 180:
        width, height = height, width
    if width < 1 or height < 1:
        raise BadVideoError(f"{name} has a video stream without a frame size")
    if seconds > limits.seconds:
        raise BadVideoError(f"{name} is {seconds:.1f} s long; videos are limited to {limits.seconds:g} s")
    check_size(name, width, height, limits)
    return VideoInfo(width, height, Fraction(fps), seconds, int(frames), codec, rotation, bool(counted), fmt, *colours)


def check_size(name: str, width: int, height: int, limits: VideoLimits, where: str = "") -> None:
    if max(width, height) > limits.side or width * height > limits.pixels:
        raise BadVideoError(f"{name} is {width}×{height}{where}; videos are limited to {limits.side} px on the long "
                            f"side and {limits.pixels / 1e6:.1f} MP a frame")


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


def max_frames(info: VideoInfo, limits: VideoLimits) -> int:
    """The most frames `limits.seconds` at the stream's rate may hold (the cap when timestamps lie or are absent)."""
    rate = min(float(info.fps), limits.rate)
    return math.floor(limits.seconds * rate * (1 + FRAME_TOLERANCE)) + 1


def _check_length(name: str, time: float | None, first: float | None, count: int, cap: int, info: VideoInfo,
                  limits: VideoLimits) -> float | None:
    """BadVideoError once frame `count` (at `time`) goes past the limits; the first timestamp seen."""
    if time is not None:
        first = time if first is None else first
        if time - first > limits.seconds:
            raise BadVideoError(f"{name} goes on past {limits.seconds:g} s (the container said "
                                f"{info.seconds:.1f} s); videos are limited to {limits.seconds:g} s")
    if count > cap:  # timestamps absent, or repeated: the count at the stream's rate still stops it
        raise BadVideoError(f"{name} holds more than {cap - 1} frames ({limits.seconds:g} s at "
                            f"{float(info.fps):g} fps); videos are limited to {limits.seconds:g} s")
    return first


ANNEX_B = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}  # codecs a GPU decoder takes as packets
# AVColorSpace tags whose frames PyAV converts with BT.601 (unspecified among them) or BT.709: a GPU decoder's
# conversion matches those (backends/torch_cuda/ops.nv12_to_rgb), no others.
MATRICES = {0: "bt601", 2: "bt601", 5: "bt601", 6: "bt601", 1: "bt709"}


def sends_packets(info: VideoInfo) -> bool:
    """Whether a decoder child asked for packets sends them for this stream (else it decodes frames itself): 8-bit
    4:2:0 H.264 or HEVC of even stored sides, limited range, a colour matrix the GPU conversion matches."""
    return (info.codec in ANNEX_B and info.pix_fmt == "yuv420p" and info.color_range != 2
            and info.colorspace in MATRICES and info.width % 2 == 0 and info.height % 2 == 0)


def packets(path: Path, info: VideoInfo, limits: VideoLimits) -> Iterator[bytes]:
    """The video stream's packets in decode order as a GPU decoder takes them (H.264/HEVC in Annex B), the limits
    enforced as `decode` enforces them (a packet a frame: these codecs' containers store one frame a packet)."""
    av = av_module()
    name, count, first = f"'{path.name}'", 0, None
    cap = max_frames(info, limits)
    try:
        with open_input(path, limits) as container:
            stream = container.streams.video[0]
            annex_b = av.BitStreamFilterContext(ANNEX_B[info.codec], stream)
            for packet in container.demux(stream):
                for out in annex_b.filter(packet if packet.size else None):
                    count += 1
                    time = float(out.pts * out.time_base) if out.pts is not None and out.time_base else None
                    first = _check_length(name, time, first, count, cap, info, limits)
                    yield bytes(out)
    except MemoryError:
        raise
    except av.error.FFmpegError:
        raise BadVideoError(f"{name} is truncated or damaged: reading stopped after {count} of about "
                            f"{info.frames} frames") from None
    if count == 0:
        raise BadVideoError(f"{name} has no video frames")
    _check_count(name, count, info)


def _check_count(name: str, count: int, info: VideoInfo) -> None:
    if info.counted and count < 0.95 * info.frames and info.frames - count >= 2:
        raise BadVideoError(f"{name} is truncated or damaged: only {count} of its {info.frames} frames could be "
                            f"decoded")


def decode(path: Path, info: VideoInfo, limits: VideoLimits) -> Iterator[np.ndarray]:
    """Upright RGB frames of the probed size, stopped with BadVideoError past `limits` whatever the metadata said,
    and when the file stops being decodable (truncated, damaged) or has no frames."""
    av = av_module()
    name, count, first = f"'{path.name}'", 0, None
    cap = max_frames(info, limits)
    width, height = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)  # as stored
    try:
        with open_input(path, limits) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding 1080p H.264 keeps up with a fast engine
            for frame in container.decode(stream):
                count += 1
                first = _check_length(name, frame.time, first, count, cap, info, limits)
                if (frame.width, frame.height) != (width, height):
                    # A stream may change size mid-way: beyond the limits it is refused, within them it is scaled
                    # to the first size, which the pipe, the engine's batch and the encoder all assume.
                    check_size(name, frame.width, frame.height, limits, f" from frame {count}")
                    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                else:
                    rgb = frame.to_ndarray(format="rgb24")
                if info.rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, info.rotation // 90))
                yield rgb
    except MemoryError:
        raise  # FFmpeg's ENOMEM too: beyond the child's memory cap, which the child says in its own sentence
    except av.error.FFmpegError:
        if count == 0:
            raise BadVideoError(f"{name} has no video frames that can be decoded (empty or truncated)") from None
        raise BadVideoError(f"{name} is truncated or damaged: decoding stopped after {count} of about "
                            f"{info.frames} frames") from None
    if count == 0:
        raise BadVideoError(f"{name} has no video frames")
    _check_count(name, count, info)
