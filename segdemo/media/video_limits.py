"""What a video may be: the formats FFmpeg may open (an allowlist), the size, length and memory limits, and what
the probe learnt about a file — plain data shared by the server and its decoder child."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import SegdemoError


class BadVideoError(SegdemoError):
    """The input could not be used as a video, or is beyond the limits."""


@dataclass(frozen=True)
class VideoFormat:
    """One container the app opens: its FFmpeg demuxer name (as `format_whitelist` matches it) and file suffixes."""

    label: str
    demuxer: str
    suffixes: tuple[str, ...]


MP4 = VideoFormat("MP4/MOV", "mov,mp4,m4a,3gp,3g2,mj2", (".mp4", ".m4v", ".mov", ".3gp"))
MKV = VideoFormat("MKV/WebM", "matroska,webm", (".mkv", ".webm"))
AVI = VideoFormat("AVI", "avi", (".avi",))
MPEGTS = VideoFormat("MPEG-TS", "mpegts", (".ts", ".mts", ".m2ts"))
MPEG = VideoFormat("MPEG-PS", "mpeg", (".mpg", ".mpeg"))
OGG = VideoFormat("Ogg", "ogg", (".ogv", ".ogg"))

# Demuxers that open further files or URLs named inside the input (playlists, lists, patterns, scripts, sessions):
# never allowed, whatever a caller's limits say — a visitor's file would make the server read its own files.
FORBIDDEN_DEMUXERS = frozenset({"hls", "dash", "concat", "image2", "imf", "sdp", "rtsp", "rtp", "webm_dash_manifest",
                                "avisynth", "vapoursynth"})


@dataclass(frozen=True)
class VideoLimits:
    """What a video may be: the app's defaults are strict (visitors share the engine), the CLI's generous."""

    seconds: float = 60.0
    pixels: int = 1920 * 1080  # per frame: 1080p in either orientation
    side: int = 1920
    bytes: int = 200 * 2**20
    formats: tuple[VideoFormat, ...] = (MP4, MKV, AVI)
    rate: float = 240.0  # frames a second counted at most when capping frames (a bogus high rate lifts no cap)
    memory: int = 2 * 2**30  # the decoder child's address space (RLIMIT_AS)
    stall: float = 30.0  # seconds the decoder child may go without a message before it is killed as hung

    def __post_init__(self) -> None:
        for fmt in self.formats:
            if set(fmt.demuxer.split(",")) & FORBIDDEN_DEMUXERS:
                raise ValueError(f"the {fmt.demuxer} demuxer reads other files or URLs and is never allowed")

    def describe(self) -> str:
        return (f"≤ {self.seconds:g} s, ≤ {self.side} px on the long side and {self.pixels / 1e6:.1f} MP a frame, "
                f"≤ {self.bytes / 2**20:.0f} MB")

    @property
    def whitelist(self) -> str:
        """FFmpeg's `format_whitelist` value: the allowed demuxers, comma-separated."""
        return ",".join(fmt.demuxer for fmt in self.formats)

    def accepted(self) -> str:
        """The accepted formats in words, with their suffixes: 'MP4/MOV (.mp4 .m4v …), MKV/WebM (…) or AVI (.avi)'."""
        names = [f"{fmt.label} ({' '.join(fmt.suffixes)})" for fmt in self.formats]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def check_suffix(self, path: Path) -> None:
        """BadVideoError unless the file's suffix is one of an allowed format's (what the upload claims to be)."""
        if not any(path.suffix.lower() in fmt.suffixes for fmt in self.formats):
            raise BadVideoError(f"'{path.name}' is not a video file the app accepts: {self.accepted()}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VideoLimits:
        data = json.loads(text)
        formats = tuple(VideoFormat(f["label"], f["demuxer"], tuple(f["suffixes"])) for f in data.pop("formats"))
        return cls(**data, formats=formats)


APP_LIMITS = VideoLimits()
CLI_LIMITS = VideoLimits(seconds=600.0, pixels=3840 * 2160, side=3840, bytes=2 * 2**30,
                         formats=(MP4, MKV, AVI, MPEGTS, MPEG, OGG), memory=4 * 2**30, stall=120.0)
VIDEO_SUFFIXES = tuple(suffix for fmt in CLI_LIMITS.formats for suffix in fmt.suffixes)


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


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
    format: str = ""  # FFmpeg's demuxer name
    pix_fmt: str = ""  # the stream's pixel format (FFmpeg's name) and colour tags: what a GPU decoder must convert
    colorspace: int = 2  # AVColorSpace (2: unspecified)
    color_range: int = 0  # AVColorRange (2: full, "JPEG")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "fps": [self.fps.numerator, self.fps.denominator]})

    @classmethod
    def from_json(cls, text: str) -> VideoInfo:
        data: dict[str, Any] = json.loads(text)
        return cls(**{**data, "fps": Fraction(*data["fps"])})
