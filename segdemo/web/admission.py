"""What the app admits: an image's bytes, format and pixels checked from its header before anything decodes it,
whichever way it came (upload, data: URL, API file, webcam frame), and a budget of pixels decoded at once."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadImageError, SegdemoError
from ..image.decode import FORMAT_NAMES, MAX_PIXELS, open_image

IMAGE_MB = 25  # a photo from any phone fits; Gradio's own upload limit is the larger of this and the video limit
TRIM_PIXELS = 8_000_000  # after an image this large, freed heap memory is handed back to the system


@dataclass(frozen=True)
class ImageLimits:
    """The largest image a visitor may send: encoded bytes and decoded pixels."""

    bytes: int = IMAGE_MB * 2**20
    pixels: int = MAX_PIXELS

    def describe(self) -> str:
        return f"≤ {self.bytes / 2**20:.0f} MB and {self.pixels / 1e6:.0f} MP; {FORMAT_NAMES}"


@dataclass(frozen=True)
class ImageFacts:
    """What an image's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect_image(source: Any, limits: ImageLimits) -> ImageFacts:
    """Check an upload (path, bytes or array) against `limits` from its header; BadImageError in one sentence."""
    if isinstance(source, np.ndarray):
        height, width = source.shape[:2]
        return _within(ImageFacts("array", width, height), limits, "the image")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise BadImageError("the upload has gone (it may have been cleaned up) — send the image again")
        size, what, opener = path.stat().st_size, "the upload", lambda: open_image(path)
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        size, what, opener = len(data), "the upload", lambda: open_image(io.BytesIO(data))
    else:
        raise BadImageError(f"cannot read an image from a {type(source).__name__}")
    if size == 0:
        raise BadImageError(f"{what} is empty (0 bytes), not an image")
    if size > limits.bytes:
        raise BadImageError(f"{what} is {size / 2**20:.1f} MB; images are limited to {limits.bytes / 2**20:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with opener() as img:
                facts = ImageFacts(str(img.format), *img.size)
    except UnidentifiedImageError:
        raise BadImageError(f"{what} is not an image in an accepted format ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise BadImageError(f"{what} declares far more pixels than allowed (a decompression bomb?); the limit is "
                            f"{limits.pixels / 1e6:.0f} MP") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{what} is truncated or corrupt ({exc})") from None
    return _within(facts, limits, what)


def _within(facts: ImageFacts, limits: ImageLimits, what: str) -> ImageFacts:
    if facts.pixels > limits.pixels:
        raise BadImageError(f"{what} is {facts.width}×{facts.height} ({facts.pixels / 1e6:.0f} MP); images are "
                            f"limited to {limits.pixels / 1e6:.0f} MP")
    return facts


class PixelBudget:
    """Bounds the pixels of images being decoded and segmented at once, so concurrent large uploads wait for each
    other instead of adding up in memory (a 64 MP image holds about a gigabyte while it is processed)."""

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self._free = pixels
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float = 600.0) -> Iterator[None]:
        """Hold `pixels` of the budget (at most all of it) while the block runs; waits while others hold it."""
        need = min(max(pixels, 1), self.capacity)
        with self._changed:
            if not self._changed.wait_for(lambda: self._free >= need, timeout):
                raise SegdemoError("the server is busy with other large images — try again in a minute")
            self._free -= need
        try:
            yield
        finally:
            with self._changed:
                self._free += need
                self._changed.notify_all()
            if need >= TRIM_PIXELS:
                trim_heap()

    @property
    def free(self) -> int:
        return self._free


def _libc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        return None


_MALLOC_TRIM = _libc_trim()


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc keeps a large image's freed blocks in its per-thread arenas,
    so the process would stay at its peak size for good)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
