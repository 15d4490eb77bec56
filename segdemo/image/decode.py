"""Decode uploads and files into RGB uint8 arrays, refusing what is not a usable image."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # 64 MP: well above phone photos, far below a decompression bomb
MAX_FILE_BYTES = 50 * 1024 * 1024
# Pillow is asked for these readers only: EPS/PS/PDF readers run Ghostscript, and rarely used formats are attack
# surface a photo demo does not need (the JPEG reader also opens phones' multi-picture JPEGs, as format MPO).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
ORIENTATION = 0x0112  # the EXIF tag
SAMPLINGS = {(1, 1), (2, 1), (2, 2)}  # luma (horizontal, vertical) factors of 4:4:4, 4:2:2, 4:2:0
TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that swap width and height (every portrait phone photo: 6)


def open_image(fp: Any, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Pillow's open with only the accepted formats' readers tried (never EPS, PDF, … whatever the file says)."""
    Image.init()  # registers every reader (Pillow preloads only a few), so each name in `formats` is known
    return Image.open(fp, formats=list(formats))


def decode(source: Any) -> np.ndarray:
    """Return an H×W×3 uint8 RGB array from a path, bytes, PIL image or numpy array."""
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        return _from_bytes(bytes(source), "the upload")
    if isinstance(source, (str, Path)):
        return _from_path(Path(source))
    raise BadImageError(f"cannot read an image from a {type(source).__name__}")


def _from_path(path: Path) -> np.ndarray:
    return _from_bytes(_read(path), f"'{path.name}'")


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise BadImageError(f"'{path}' does not exist or is not a file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BadImageError(f"'{path.name}' is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")
    return path.read_bytes()


def encoded_bytes(source: Any) -> bytes | None:
    """The encoded file behind a path or bytes (size-checked), None for sources that are already pixels."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        return _read(Path(source))
    return None


class JpegHeader(NamedTuple):
    """What a GPU decoder needs to know about a plain JPEG."""

    height: int  # as stored
    width: int
    sampling: tuple[int, int]  # luma samples per chroma sample, (vertical, horizontal): (2, 2) is 4:2:0
    orientation: int = 1  # EXIF orientation (1–8) the decoded pixels still need, as ImageOps.exif_transpose

    @property
    def upright(self) -> tuple[int, int]:
        """(height, width) once the EXIF orientation is applied: 5–8 turn the picture by a quarter."""
        return (self.width, self.height) if self.orientation in TRANSPOSING else (self.height, self.width)


class EncodedJpeg(NamedTuple):
    """A plain JPEG's bytes and header, for a backend that decodes on its device."""

    data: bytes
    header: JpegHeader


def plain_jpeg(data: bytes) -> JpegHeader | None:
    """The header of a complete YCbCr JPEG (4:4:4, 4:2:2 or 4:2:0), with its EXIF orientation, else None.

    A GPU decoder that replays libjpeg's chroma upsampling and colour conversion gives Pillow's pixels for such
    files (up to inverse-DCT rounding); everything else (other formats, CMYK, greyscale, Adobe RGB, rotated,
    truncated or with bytes after the end marker, tiny or too large) is left to `decode`, which also words errors.
    A device applies the orientation itself, as `decode` does with ImageOps.exif_transpose.
    """
    if not data.startswith(b"\xff\xd8\xff") or not data.endswith(b"\xff\xd9"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(io.BytesIO(data), ("JPEG",)) as img:
                width, height = img.size
                factors = [tuple(layer[1:3]) for layer in getattr(img, "layer", [])]  # (h, v) per component
                plain = (img.format == "JPEG" and img.mode == "RGB" and len(factors) == 3
                         and factors[1] == factors[2] == (1, 1) and factors[0] in SAMPLINGS
                         and 16 <= min(width, height) and width * height <= MAX_PIXELS
                         and img.info.get("adobe_transform", 1) == 1)
                orientation = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 — whatever Pillow dislikes, decode() will explain
        return None
    if not plain or orientation not in range(1, 9):
        return None
    return JpegHeader(height, width, factors[0][::-1], orientation)


def _from_bytes(data: bytes, what: str) -> np.ndarray:
    if not data:
        raise BadImageError(f"{what} is empty (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1× and 2× its own pixel limit; we check sizes ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(io.BytesIO(data)) as img:
                _check_size(img.size, what)
                frames = getattr(img, "n_frames", 1)
                if frames > 1:
                    log.warning("%s is animated (%d frames): segmenting the first frame", what, frames)
                    img.seek(0)
                img.load()
                return _to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(f"{what} is not an image in an accepted format ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise BadImageError(
            f"{what} declares far more pixels than allowed (a decompression bomb?); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} MP"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{what} is truncated or corrupt ({exc})") from None


def _check_size(size: tuple[int, int], what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise BadImageError(f"{what} has no pixels ({width}×{height})")
    if width * height > MAX_PIXELS:
        raise BadImageError(
            f"{what} is {width}×{height} ({width * height / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Apply EXIF orientation and bring any mode (16-bit, CMYK, palette, alpha) to 8-bit RGB."""
    _check_size(img.size, "the image")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: PIL's convert() clips instead of scaling, which would give a white image.
        wide = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
        grey = np.clip(wide * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are drawn over white, as a browser shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise BadImageError(f"expected an H×W×3 image array, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            array = (array.astype(np.uint32) * 255 + 32767) // 65535
        elif np.issubdtype(array.dtype, np.floating) and np.nanmax(array) <= 1.0:
            array = np.nan_to_num(array) * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    if array.shape[2] == 4:
        return _to_rgb(Image.fromarray(array, "RGBA"))
    _check_size((array.shape[1], array.shape[0]), "the image")
    return np.ascontiguousarray(array)
