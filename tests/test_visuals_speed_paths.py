"""The overlay (Pillow's blend) and the palette-converted colour mask give exactly the per-pixel float results."""

from __future__ import annotations

import numpy as np
import pytest

from segdemo.image.visuals import blend_table, colour_mask, overlay
from segdemo.model.labels import ADE20K_LABELS, palette


@pytest.mark.parametrize("opacity", [0.0, 0.1, 0.5, 0.77, 1.0, -3.0, 7.0])
def test_overlay_equals_float_blend(opacity):
    rng = np.random.default_rng(7)
    image, mask = (rng.integers(0, 256, (61, 83, 3), dtype=np.uint8) for _ in range(2))
    o = np.float32(min(max(opacity, 0.0), 1.0))
    photo = image.astype(np.float32)
    expected = photo + o * (mask.astype(np.float32) - photo)  # Pillow's Blend.c in float32, truncated
    assert np.array_equal(overlay(image, mask, opacity), expected.astype(np.uint8))
    assert np.array_equal(np.take(blend_table(float(o)), (image.astype(np.uint16) << 8) | mask),
                          expected.astype(np.uint8))  # the devices' table holds the same arithmetic


def test_colour_mask_is_a_lookup():
    colours = palette(ADE20K_LABELS)
    class_map = np.random.default_rng(3).integers(0, 256, (40, 50), dtype=np.uint8)
    mask = colour_mask(class_map, colours)
    assert mask.shape == (40, 50, 3) and mask.flags.c_contiguous
    assert np.array_equal(mask[class_map < 150], colours[class_map[class_map < 150]])
    assert not mask[class_map >= 150].any()
