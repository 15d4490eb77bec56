"""Pictures of a class map: colour mask, overlay, the palette PNG whose pixels are class ids, and the smaller
copies made for display (what the browser shows is made at display resolution and encoded fast)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .preprocess import output_size

DEFAULT_OPACITY = 0.5
DISPLAY_SIDE = 1600  # long side of what the browser shows; full-resolution files are downloads
JPEG_QUALITY = 90  # display overlays: photographic, so JPEG (4:4:4 keeps the class edges' colours sharp)
PNG_LEVEL = 1  # zlib level of palette PNGs: class maps compress well even at 1, much faster than the default 6


def colour_table(colours: np.ndarray) -> np.ndarray:
    """256×3 uint8: the colour of every possible class id (ids past the palette are black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = colours[:256]
    return lut


def colour_mask(class_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 picture of the class map (Pillow's palette conversion: colour_table's lookup, faster than numpy)."""
    return np.asarray(_palette_image(class_map, colours).convert("RGB"))


def clamp_opacity(opacity: float) -> float:
    return float(min(max(opacity, 0.0), 1.0))


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Blend the colour mask over the photo; opacity 0 shows the photo, 1 the mask.

    Pillow's blend (photo + opacity·(mask − photo), truncated), faster than a numpy table lookup;
    `blend_table` holds the same arithmetic for devices.
    """
    return np.asarray(Image.blend(Image.fromarray(image), Image.fromarray(mask), clamp_opacity(opacity)))


@lru_cache(maxsize=16)
def blend_table(opacity: float) -> np.ndarray:
    """overlay's arithmetic for every (photo, mask) byte pair, indexed by photo·256 + mask (Pillow computes it)."""
    value = np.arange(256, dtype=np.uint8)
    photo = Image.fromarray(np.ascontiguousarray(np.repeat(value[:, None], 256, axis=1)))
    mask = Image.fromarray(np.ascontiguousarray(np.repeat(value[None, :], 256, axis=0)))
    return np.asarray(Image.blend(photo, mask, clamp_opacity(opacity))).ravel().copy()  # writable: torch takes it


def _palette_image(class_map: np.ndarray, colours: np.ndarray) -> Image.Image:
    """A "P" image over the class map's bytes whose palette is colour_table(colours)."""
    class_map = np.ascontiguousarray(class_map, dtype=np.uint8)
    height, width = class_map.shape
    img = Image.frombuffer("P", (width, height), class_map, "raw", "P", 0, 1)
    img.putpalette(colour_table(colours).tobytes())
    return img


def class_map_png(class_map: np.ndarray, colours: np.ndarray) -> bytes:
    """A palette PNG: viewers show colours, but each pixel value IS the class id."""
    img = _palette_image(class_map, colours)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def read_class_map(path: str | Path) -> np.ndarray:
    """Class ids back from a palette PNG written by `class_map_png`."""
    with Image.open(path) as img:
        if img.mode != "P":
            raise ValueError(f"{path} is a {img.mode} PNG, not a palette class map")
        return np.asarray(img)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY, subsampling: int = 0) -> bytes:
    """A display JPEG of an RGB picture (default 4:4:4: no chroma smear across class boundaries; 2 is 4:2:0)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def display_size(size: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) shown in the browser: `size`, or scaled so its long side is `side` (never enlarged)."""
    return output_size(size, side)  # the same rule as the class map's compute size, another limit
