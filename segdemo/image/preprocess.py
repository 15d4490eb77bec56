"""Host-side preprocessing: the resize to the network's input size and the output-size limit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MAX_OUTPUT_SIDE = 2048  # class maps of larger images are computed at this long side, then scaled back


@dataclass(frozen=True)
class ModelInput:
    """What every backend consumes: the resized pixels and the size the class map must have."""

    pixels: np.ndarray  # uint8 [1, H_in, W_in, 3], RGB
    out_size: tuple[int, int]  # (height, width) of the class map the graph produces
    original_size: tuple[int, int]  # (height, width) of the decoded image


def resize_for_model(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize exactly as SegformerImageProcessor does it (Pillow, uint8)."""
    height, width = input_size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def output_size(original: tuple[int, int], max_side: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """The class-map size the graph computes: the original, or scaled so the long side is max_side."""
    height, width = original
    long_side = max(height, width)
    if long_side <= max_side:
        return (height, width)
    scale = max_side / long_side
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def prepare(image: np.ndarray, input_size: tuple[int, int], max_side: int = MAX_OUTPUT_SIDE) -> ModelInput:
    """Resize a decoded RGB image for the network and work out the output size."""
    original = (int(image.shape[0]), int(image.shape[1]))
    pixels = resize_for_model(image, input_size)[None]
    return ModelInput(np.ascontiguousarray(pixels), output_size(original, max_side), original)
