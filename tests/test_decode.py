"""Bad and unusual images: clear errors for what cannot be used, correct RGB for what can."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from segdemo.errors import BadImageError
from segdemo.image.decode import ORIENTATION, decode, encoded_bytes, plain_jpeg

from .conftest import photo


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture\n" * 10, "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "not an image"),
    ],
    ids=["zero-bytes", "text", "pdf"],
)
def test_not_an_image(data, message):
    with pytest.raises(BadImageError, match=message):
        decode(data)


def test_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(photo("coffee")).save(buf, format="JPEG")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_corrupt_png():
    data = bytearray(_png_bytes(Image.fromarray(photo("chelsea"))))
    data[200:400] = b"\x00" * 200
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode(bytes(data))


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(BadImageError, match="limit is 64 MP"):
        decode(_bomb_png(100_000, 100_000))


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        decode(tmp_path / "nope.png")


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    rgb = decode(_png_bytes(Image.fromarray(ramp, "I;16")))
    assert rgb.shape == (8, 256, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 < rgb[0, 128, 0] < 135


def test_cmyk_jpeg():
    buf = io.BytesIO()
    Image.fromarray(photo("coffee")).convert("CMYK").save(buf, format="JPEG")
    rgb = decode(buf.getvalue())
    assert rgb.shape == (400, 600, 3)


def test_palette_with_transparency_is_drawn_over_white():
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.info["transparency"] = 0
    rgb = decode(_png_bytes(img, transparency=0))
    assert (rgb == 255).all()


def test_animated_gif_uses_first_frame(caplog):
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = decode(buf.getvalue())
    assert rgb.shape == (24, 32, 3) and rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 50
    assert "animated" in caplog.text


def test_exif_orientation_is_applied():
    img = Image.fromarray(photo("coffee", (40, 80)))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode(buf.getvalue()).shape == (80, 40, 3)


def test_arrays_of_other_types():
    assert decode(np.zeros((5, 7), np.uint8)).shape == (5, 7, 3)
    assert decode(np.ones((5, 7, 3), np.float32)).max() == 255
    with pytest.raises(BadImageError, match="H×W×3"):
        decode(np.zeros((5, 7, 2), np.uint8))


def _jpeg(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def test_plain_jpegs_are_recognised_for_gpu_decoding():
    image = photo("coffee", (120, 160))
    assert plain_jpeg(_jpeg(image)) == (120, 160, (2, 2), 1)
    assert plain_jpeg(_jpeg(image, progressive=True)) == (120, 160, (2, 2), 1)
    assert plain_jpeg(_jpeg(image, subsampling=1)).sampling == (1, 2)
    assert plain_jpeg(_jpeg(image, subsampling=0)).sampling == (1, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_phone_photos_keep_their_exif_orientation_for_the_device(orientation):
    image = photo("coffee", (120, 160))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = _jpeg(image, exif=exif.tobytes())
    header = plain_jpeg(data)
    assert header.orientation == orientation and (header.height, header.width) == (120, 160)
    assert header.upright == decode(data).shape[:2]  # the size the host decoder gives after exif_transpose


def test_everything_else_is_left_to_the_host_decoder():
    image = photo("coffee", (120, 160))
    exif = Image.Exif()
    exif[ORIENTATION] = 9  # not an orientation
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    data = _jpeg(image)
    for name, other in {
        "png": png.getvalue(),
        "grey": _jpeg(image[:, :, 0]),
        "cmyk": _cmyk_jpeg(image),
        "bad orientation": _jpeg(image, exif=exif.tobytes()),
        "truncated": data[: len(data) // 2],
        "trailing bytes": data + b"MP4 video of a motion photo",
        "garbage": b"\xff\xd8\xff" + b"x" * 100 + b"\xff\xd9",
        "tiny": _jpeg(image[:8, :8]),
    }.items():
        assert plain_jpeg(other) is None, name
    # and the host decoder still judges them as before
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def _cmyk_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_encoded_bytes_reads_files_with_the_size_limit(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg(photo("coffee", (64, 64))))
    assert encoded_bytes(path) == path.read_bytes() == encoded_bytes(str(path)) == encoded_bytes(path.read_bytes())
    assert encoded_bytes(photo("coffee", (8, 8))) is None
    with pytest.raises(BadImageError, match="does not exist"):
        encoded_bytes(tmp_path / "missing.jpg")
