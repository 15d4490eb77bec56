"""The video clips the live and video benchmarks (and the tests) use: a photograph panned and zoomed, so every
frame differs and the class shares move, written as H.264 MP4 or served as frames."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..optional import missing
from .images import photo


def picture(name: str) -> np.ndarray:
    """scikit-image's photograph `name`, or — where scikit-image is not installed (a bare GPU image) — a drawn scene
    of the same size class (sky, ground, a few shapes), so the benchmarks run with numpy and Pillow alone."""
    if not missing("skimage", "scikit-image"):
        return photo(name)
    from PIL import ImageDraw

    scene = Image.new("RGB", (1024, 768), (120, 170, 230))
    draw = ImageDraw.Draw(scene)
    draw.rectangle((0, 460, 1024, 768), fill=(90, 140, 60))
    draw.ellipse((700, 60, 860, 220), fill=(250, 220, 90))
    draw.rectangle((120, 260, 420, 560), fill=(150, 80, 60))
    draw.polygon([(100, 260), (270, 140), (440, 260)], fill=(110, 50, 40))
    draw.rectangle((520, 380, 900, 520), fill=(40, 40, 50))
    return np.asarray(scene)


def pan_frames(width: int, height: int, count: int, name: str = "astronaut") -> Iterator[np.ndarray]:
    """`count` RGB frames of `name`: a window sliding and zooming across the photo, resized to width × height."""
    source = Image.fromarray(picture(name))
    sw, sh = source.size
    for k in range(count):
        t = k / max(1, count - 1)
        zoom = 0.6 + 0.3 * np.sin(np.pi * t)  # the window is 60–90 % of the photo
        w, h = int(sw * zoom), int(sh * zoom)
        left, top = int((sw - w) * t), int((sh - h) * (0.5 + 0.5 * np.sin(2 * np.pi * t)) * 0.99)
        window = source.crop((left, top, left + w, top + h))
        yield np.asarray(window.resize((width, height), Image.Resampling.BILINEAR))


def make_clip(path: Path, width: int, height: int, seconds: float, fps: int = 30, rotation: int = 0,
              faststart: bool = False) -> Path:
    """An H.264 MP4 of `seconds` at `fps` (stored width × height; `rotation` in its display matrix)."""
    from ..media.video_io import write_mp4

    count = max(1, round(seconds * fps))
    options = {"movflags": "+faststart"} if faststart else None
    return write_mp4(path, pan_frames(width, height, count), Fraction(fps), rotation, options)


def jpeg_frames(width: int, height: int, count: int, quality: int = 92) -> list[bytes]:
    """Webcam-like frames as a browser sends them (canvas.toDataURL('image/jpeg') → JPEG bytes)."""
    import io

    out = []
    for frame in pan_frames(width, height, count, "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def write_y4m(path: Path, width: int, height: int, count: int, fps: int = 30) -> Path:
    """A YUV4MPEG2 file (4:2:0) of the panned photo: what Chromium's fake webcam plays (--use-file-for-fake-…)."""
    with path.open("wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in pan_frames(width, height, count, "coffee"):
            ycbcr = Image.fromarray(frame).convert("YCbCr")
            y, cb, cr = (np.asarray(p) for p in ycbcr.split())
            half = (width // 2, height // 2)
            fh.write(b"FRAME\n" + y.tobytes() + np.asarray(Image.fromarray(cb).resize(half)).tobytes()
                     + np.asarray(Image.fromarray(cr).resize(half)).tobytes())
    return path
