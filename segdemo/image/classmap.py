"""Class maps: bring them back to the original size and count what they contain."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image


class LegendEntry(NamedTuple):
    """One class present in a class map (a tuple: up to 150 are made per request, so they must be cheap)."""

    id: int
    name: str
    color: str  # "#rrggbb"
    pixels: int
    share: float  # fraction of the image, 0..1

    def to_dict(self) -> dict:
        return self._asdict()


def restore_size(class_map: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour scale back to the original size (class ids must never be blended)."""
    if class_map.shape == original:
        return class_map
    height, width = original
    return np.asarray(Image.fromarray(class_map).resize((width, height), Image.Resampling.NEAREST))


@lru_cache(maxsize=64)
def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Which of `src` entries each of `dst` outputs takes in restore_size (Pillow's own mapping, read off a ramp).

    Pillow's nearest-neighbour resize treats the axes independently, so a device can replay restore_size with two
    gathers of these indices and get the same pixels.
    """
    ramp = Image.fromarray(np.arange(src, dtype=np.int32)[None, :])  # mode "I"
    return np.asarray(ramp.resize((dst, 1), Image.Resampling.NEAREST), dtype=np.int64)[0]


def legend(class_map: np.ndarray, labels: list[str], colours: np.ndarray) -> list[LegendEntry]:
    """Classes present, largest share first (ties by id)."""
    return legend_from_counts(np.bincount(class_map.ravel(), minlength=len(labels)), labels, colours)


def legend_from_counts(counts: np.ndarray, labels: list[str], colours: np.ndarray) -> list[LegendEntry]:
    """The legend from pixels per class id (a device may have counted them)."""
    counts = np.asarray(counts)
    total = int(counts.sum())
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))].tolist()  # largest first, ties by id
    hexes = _hex_colours(colours.tobytes())
    return [
        LegendEntry(i, labels[i] if i < len(labels) else f"class {i}", hexes[i % len(hexes)], pixels, pixels / total)
        for i, pixels in zip(order, counts[order].tolist(), strict=True)
    ]


@lru_cache(maxsize=8)
def _hex_colours(rgb: bytes) -> tuple[str, ...]:
    return tuple(f"#{rgb[k]:02x}{rgb[k + 1]:02x}{rgb[k + 2]:02x}" for k in range(0, len(rgb), 3))
