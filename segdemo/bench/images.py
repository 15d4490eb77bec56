"""The images the benchmarks upload: scikit-image photos at chosen sizes, and `bench --app`'s named set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegdemoError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # the engine bench cycles through these
# name → (scikit-image photo, size as stored); phone12mp carries EXIF Orientation 6, png-screenshot is drawn
IMAGES = {"512": ("astronaut", (512, 512)), "1024x768": ("coffee", (1024, 768)),
          "1920x1080": ("chelsea", (1920, 1080)), "phone12mp": ("rocket", (4032, 3024)),
          "png-screenshot": ("astronaut", (1920, 1080))}


def photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, as RGB (every name used here is an RGB photo)."""
    import skimage.data

    return getattr(skimage.data, name)()


def image_names(text: str, option: str) -> list[str]:
    """'512,phone12mp' → ['512', 'phone12mp'], each checked against IMAGES."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMAGES]
    if unknown or not names:
        raise SegdemoError(f"{option}: unknown image {', '.join(unknown) or '(none)'}; choose from {', '.join(IMAGES)}")
    return names


def make_images(folder: Path, names: list[str], count: int = 1) -> dict[str, dict[str, Any]]:
    """`count` files per image: the first as made, the others with a 16-px corner patch of their own colour.

    Gradio's file cache is content-addressed, so identical uploads would share one URL (and a browser-cached
    overlay); every request of a run gets a file of its own. Sizes and bytes are the first file's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        image, exif = _base_image(name)
        png = name == "png-screenshot"
        paths = []
        for k in range(count):
            variant = image.copy() if k else image
            if k:
                variant.paste(((k * 53) % 256, (k * 97) % 256, (k * 29 + 80) % 256), (8, 8, 24, 24))
            path = folder / f"{name}-{k:02d}.{'png' if png else 'jpg'}"
            if png:
                variant.save(path, format="PNG")
            else:
                variant.save(path, quality=90, **exif)
            paths.append(str(path))
        shown = image.size[::-1] if exif else image.size  # Orientation 6 turns it a quarter: portrait
        out[name] = {"paths": paths, "size": list(image.size), "shown": list(shown),
                     "bytes": Path(paths[0]).stat().st_size, "format": "PNG" if png else "JPEG"}
    return out


def _base_image(name: str) -> tuple[Any, dict[str, Any]]:
    from PIL import Image

    if name == "png-screenshot":
        return _screenshot(IMAGES[name][1]), {}
    name_of_photo, size = IMAGES[name]
    image = Image.fromarray(photo(name_of_photo)).resize(size, Image.Resampling.BICUBIC)
    if name != "phone12mp":
        return image, {}
    exif = Image.Exif()
    exif[0x0112] = 6  # phones store the sensor's landscape pixels and say "rotate 90° clockwise to display"
    return image, {"exif": exif}


def _screenshot(size: tuple[int, int]) -> Any:
    """A synthetic UI screenshot: flat panels, text, a photo in a panel (what people paste from the clipboard)."""
    from PIL import Image, ImageDraw, ImageFont

    def font(px: int) -> Any:
        try:
            return ImageFont.load_default(size=px)
        except (TypeError, ImportError, OSError):  # Pillow without FreeType: the small bitmap font
            return ImageFont.load_default()

    width, height = size
    image = Image.new("RGB", size, (243, 244, 246))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 56), fill=(31, 41, 55))
    draw.text((24, 14), "segdemo — project dashboard", fill=(255, 255, 255), font=font(24))
    draw.rectangle((0, 56, 280, height), fill=(229, 231, 235))
    for i in range(14):
        draw.text((28, 90 + 46 * i), f"Menu item {i + 1}", fill=(55, 65, 81), font=font(18))
    for j in range(3):
        x = 320 + j * 530
        draw.rounded_rectangle((x, 90, x + 500, 290), radius=12, fill=(255, 255, 255), outline=(209, 213, 219))
        draw.text((x + 24, 110), f"Panel {j + 1}", fill=(17, 24, 39), font=font(22))
        draw.text((x + 24, 160), f"{1234 * (j + 1):,} requests · {97 - j}.{j}% ok", fill=(75, 85, 99),
                  font=font(18))
    draw.rounded_rectangle((320, 320, 1380, 1050), radius=12, fill=(255, 255, 255), outline=(209, 213, 219))
    image.paste(Image.fromarray(photo("coffee")).resize((1000, 667), Image.Resampling.BICUBIC), (350, 350))
    for i in range(16):
        draw.text((1420, 330 + 40 * i), f"Note {i + 1}: a line of interface text", fill=(55, 65, 81), font=font(17))
    return image
