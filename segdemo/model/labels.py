"""ADE20K class names and the colour palette used to draw class maps."""

from __future__ import annotations

import colorsys

import numpy as np

# The 150 ADE20K (SceneParsing) classes in the order SegFormer ADE checkpoints use.
ADE20K_LABELS: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_LABELS) == 150


def palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic RGB colours (uint8, shape [num_classes, 3]) for class ids."""
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    golden = 0.618033988749895
    for i in range(num_classes):
        # Golden-ratio hue steps keep neighbouring ids far apart; cycling lightness/saturation
        # separates the ids whose hues end up close.
        hue = (i * golden) % 1.0
        lightness = (0.45, 0.6, 0.35)[i % 3]
        saturation = (0.85, 0.65, 0.95)[(i // 3) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
        colours[i] = (round(r * 255), round(g * 255), round(b * 255))
    return colours[:num_classes]
