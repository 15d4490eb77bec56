"""Class maps: bring them back to the original size and count what they contain."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class LegendEntry:
    """One class present in a class map."""

    id: int
    name: str
    color: str  # "#rrggbb"
    pixels: int
    share: float  # fraction of the image, 0..1

    def to_dict(self) -> dict:
        return asdict(self)


def restore_size(class_map: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour scale back to the original size (class ids must never be blended)."""
    if class_map.shape == original:
        return class_map
    height, width = original
    return np.asarray(Image.fromarray(class_map).resize((width, height), Image.Resampling.NEAREST))


def legend(class_map: np.ndarray, labels: list[str], colours: np.ndarray) -> list[LegendEntry]:
    """Classes present, largest share first (ties by id)."""
    counts = np.bincount(class_map.ravel(), minlength=len(labels))
    total = int(class_map.size)
    present = np.flatnonzero(counts)
    entries = [
        LegendEntry(
            id=int(i),
            name=labels[i] if i < len(labels) else f"class {i}",
            color="#{:02x}{:02x}{:02x}".format(*colours[i % len(colours)]),
            pixels=int(counts[i]),
            share=int(counts[i]) / total,
        )
        for i in present
    ]
    return sorted(entries, key=lambda e: (-e.pixels, e.id))
