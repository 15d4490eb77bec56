"""Pictures of a class map: colour mask, overlay, and the palette PNG whose pixels are class ids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def colour_mask(class_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 picture of the class map."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = colours[:256]
    return lut[class_map]


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the photo; opacity 0 shows the photo, 1 the mask."""
    opacity = float(min(max(opacity, 0.0), 1.0))
    blended = image.astype(np.float32) * (1.0 - opacity) + mask.astype(np.float32) * opacity
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def class_map_png(class_map: np.ndarray, colours: np.ndarray) -> bytes:
    """A palette PNG: viewers show colours, but each pixel value IS the class id."""
    img = Image.fromarray(class_map.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours[:256]
    img.putpalette(flat.ravel().tolist())
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False)
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
