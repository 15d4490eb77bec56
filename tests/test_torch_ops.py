"""The device request path's arithmetic equals the host functions bit for bit (checked on CPU tensors)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from segdemo.backends.torch_cuda.ops import (
    PRECISION_BITS,
    blend,
    class_counts,
    colourise,
    pil_bilinear_taps,
    resize_like_pil,
)
from segdemo.image.preprocess import resize_for_model
from segdemo.image.visuals import blend_table, colour_mask, colour_table, overlay
from segdemo.model.labels import ADE20K_LABELS, palette

from .conftest import photo

SIZES = [(768, 1024), (1500, 2000), (2048, 2048), (300, 700), (48, 64), (1, 1), (1, 900), (4000, 100), (511, 513),
         (512, 1024), (37, 1999)]


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("target", [(512, 512), (97, 300)], ids=str)
def test_resize_is_pillow_bilinear_exactly(size, target):
    rng = np.random.default_rng(size[0] * 7919 + size[1])
    # A photograph (smooth areas, edges) and noise (every rounding case) at the same size.
    for image in (photo("astronaut", size) if min(size) > 2 else rng.integers(0, 256, (*size, 3), np.uint8),
                  rng.integers(0, 256, (*size, 3), np.uint8)):
        expected = resize_for_model(image, target)
        got = resize_like_pil(torch.from_numpy(image.copy()), target).numpy()
        assert got.shape == (*target, 3)
        assert np.array_equal(got, expected), f"{size}→{target}: {np.abs(got.astype(int) - expected).max()} off"


def test_resize_of_a_strided_view_and_unchanged_size():
    image = photo("coffee", (512, 512))
    chw = torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()  # what nvJPEG returns, viewed back as HWC
    hwc = chw.permute(1, 2, 0)
    assert np.array_equal(resize_like_pil(hwc, (200, 300)).numpy(), resize_for_model(image, (200, 300)))
    assert resize_like_pil(hwc, (512, 512)).numpy().tobytes() == image.tobytes()


@pytest.mark.parametrize("in_size, out_size", [(1024, 512), (700, 512), (48, 512), (2048, 97), (1, 300)])
def test_taps_are_pillows_fixed_point_weights(in_size, out_size):
    index, weights = pil_bilinear_taps(in_size, out_size)
    assert index.shape == weights.shape and index.min() >= 0 and index.max() < in_size
    # Normalised to 1.0 before rounding: each row sums to 2^22 give or take the rounding of its taps.
    sums = weights.astype(np.int64).sum(axis=1)
    assert np.all(np.abs(sums - (1 << PRECISION_BITS)) <= weights.shape[1])


def test_colours_overlay_and_counts_equal_the_host_functions():
    rng = np.random.default_rng(3)
    colours = palette(ADE20K_LABELS)
    class_map = rng.integers(0, 150, (123, 77), np.uint8)
    class_map[:5] = 7  # a dominant class, and ids the palette lacks stay black in both
    image = rng.integers(0, 256, (123, 77, 3), np.uint8)
    mask = colourise(torch.from_numpy(class_map), torch.from_numpy(colour_table(colours))).numpy()
    assert np.array_equal(mask, colour_mask(class_map, colours))
    for opacity in (0.0, 0.35, 0.5, 1.0):
        got = blend(torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(blend_table(opacity))).numpy()
        assert np.array_equal(got, overlay(image, mask, opacity)), opacity
    counts = class_counts(torch.from_numpy(class_map)).numpy()
    assert counts.shape == (256,) and np.array_equal(counts[:150], np.bincount(class_map.ravel(), minlength=150))
    assert counts[150:].sum() == 0


def _turbojpeg():
    try:
        from turbojpeg import TurboJPEG

        return TurboJPEG()
    except (ImportError, RuntimeError, OSError) as exc:  # .ci/run installs both; elsewhere say what is missing
        pytest.skip(f"needs PyTurboJPEG and the libturbojpeg0 system package: {exc}")


@pytest.mark.parametrize("subsampling, sampling", [(2, (2, 2)), (1, (1, 2)), (0, (1, 1))], ids=["420", "422", "444"])
@pytest.mark.parametrize("size", [(512, 512), (767, 1023), (300, 17), (49, 67)], ids=str)
def test_jpeg_planes_to_rgb_is_pillows_decode(subsampling, sampling, size):
    """libjpeg's raw Y/Cb/Cr planes (what nvJPEG's "unchanged" output holds) → exactly Pillow's RGB pixels."""
    import io

    from PIL import Image

    from segdemo.backends.torch_cuda.ops import jpeg_planes_to_rgb, ycc_tables
    from segdemo.image.decode import decode, plain_jpeg

    turbo = _turbojpeg()
    buffer = io.BytesIO()
    Image.fromarray(photo("coffee", size)).save(buffer, format="JPEG", quality=90, subsampling=subsampling)
    data = buffer.getvalue()
    header = plain_jpeg(data)
    assert header is not None and header.sampling == sampling and (header.height, header.width) == size
    planes = torch.zeros((3, *size), dtype=torch.uint8)  # each plane in the top-left corner, as nvJPEG leaves them
    for channel, plane in enumerate(turbo.decode_to_yuv_planes(data)):
        rows, cols = min(plane.shape[0], size[0]), min(plane.shape[1], size[1])
        planes[channel, :rows, :cols] = torch.from_numpy(np.ascontiguousarray(plane[:rows, :cols]))
    rgb = jpeg_planes_to_rgb(planes, header.sampling, torch.from_numpy(ycc_tables())).numpy()
    assert np.array_equal(rgb, decode(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_equals_exif_transpose(orientation):
    from PIL import Image, ImageOps

    from segdemo.backends.torch_cuda.ops import orient

    pixels = photo("coffee", (37, 53))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    assert np.array_equal(orient(torch.from_numpy(pixels), orientation).numpy(), expected)


@pytest.mark.parametrize("src, dst", [((97, 131), (300, 410)), ((1536, 2048), (3024, 4032)), ((50, 60), (20, 25))])
def test_gather_nearest_equals_restore_size(src, dst):
    from segdemo.backends.torch_cuda.ops import gather_nearest
    from segdemo.image.classmap import nearest_indices, restore_size

    class_map = np.random.default_rng(sum(src)).integers(0, 150, src, dtype=np.uint8)
    rows, columns = (torch.from_numpy(nearest_indices(s, d)) for s, d in zip(src, dst, strict=True))
    assert np.array_equal(gather_nearest(torch.from_numpy(class_map), rows, columns).numpy(),
                          restore_size(class_map, dst))


def test_counts_of_maps_past_float32_precision_are_exact(monkeypatch):
    from segdemo.backends.torch_cuda import ops as torch_ops

    monkeypatch.setattr(torch_ops, "COUNT_CHUNK", 1000)  # the 2^24 split, at a size a test can afford
    class_map = torch.from_numpy(np.random.default_rng(3).integers(0, 150, (300, 400), dtype=np.uint8))
    assert np.array_equal(torch_ops.class_counts(class_map).numpy(),
                          np.bincount(class_map.numpy().ravel(), minlength=256))


def test_i420_of_an_overlay_is_what_libswscale_makes_of_it():
    """The video path's device-side colour conversion against libswscale's rgb24 → yuv420p (what the encoder thread
    did with the RGB overlay): within 1 level everywhere, photo and class edges alike."""
    av = pytest.importorskip("av")
    from segdemo.backends.torch_cuda.ops import rgb_to_i420

    picture = photo("astronaut", (480, 640))
    mask = colour_mask(np.arange(480 * 640, dtype=np.int64).reshape(480, 640) // 9000 % 150, palette(ADE20K_LABELS))
    shown = overlay(picture, mask, 0.5)
    want = av.VideoFrame.from_ndarray(shown, format="rgb24").reformat(format="yuv420p").to_ndarray()
    got = rgb_to_i420(torch.from_numpy(shown.copy())).numpy()
    assert got.shape == want.shape == (720, 640) and got.dtype == np.uint8
    difference = np.abs(got.astype(np.int16) - want)
    assert difference.max() <= 1 and difference[:480].mean() < 0.2 and difference[480:].mean() < 0.2


@pytest.mark.parametrize("colorspace, matrix", [("ITU601", "bt601"), ("ITU709", "bt709")])
def test_nv12_from_a_gpu_decoder_becomes_what_pyav_makes_of_the_frame(colorspace, matrix):
    """NVDEC's NV12 surface → RGB on the device against PyAV's rgb24 of the same decoded 4:2:0 frame."""
    av = pytest.importorskip("av")
    from segdemo.backends.torch_cuda.ops import nv12_to_rgb

    picture = photo("astronaut", (480, 640))
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p", dst_colorspace=colorspace)
    want = frame.to_ndarray(format="rgb24", src_colorspace=colorspace)
    planes = frame.to_ndarray()
    cb, cr = planes[480:600].reshape(240, 320), planes[600:].reshape(240, 320)
    nv12 = np.concatenate([planes[:480], np.stack([cb, cr], -1).reshape(240, 640)])
    got = nv12_to_rgb(torch.from_numpy(nv12), 480, 640, matrix).numpy()
    difference = np.abs(got.astype(np.int16) - want)
    assert got.shape == want.shape and difference.max() <= 2 and difference.mean() < 0.5


def test_a_batch_splits_only_where_padding_costs_more_than_a_call():
    """bucket_split: every request runs once, no part exceeds the largest bucket unless none is captured, and a
    batch of 9 no longer pads bucket 16 with 7 rows of nothing (8 + 1 instead)."""
    from segdemo.backends.torch_cuda.graphs import CALL_COST_ROWS, batch_bucket, bucket_split

    buckets = [1, 2, 4, 8, 16]
    for count in range(1, 40):
        parts = bucket_split(count, buckets)
        assert sum(parts) == count and all(part <= 16 for part in parts), (count, parts)
        rows = sum(batch_bucket(part) for part in parts) + CALL_COST_ROWS * (len(parts) - 1)
        assert rows <= batch_bucket(count) or count > 16, (count, parts)
    assert bucket_split(9, buckets) == [8, 1] and bucket_split(16, buckets) == [16]
    assert bucket_split(15, buckets) == [15]  # one padding row is cheaper than 8 + 4 + 2 + 1
    assert bucket_split(3, [1]) == [1, 1, 1] and bucket_split(3, []) == [3] and bucket_split(0, buckets) == []
