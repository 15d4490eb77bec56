"""The host pictures' arithmetic as torch ops, bit-exact with its host twin (Pillow's resize, visuals, the legend's
bincount, libjpeg's colour, the ONNX graph's Resize + ArgMax), so a GPU backend does a whole request on its device."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling (Resample.c)
BUCKET = 128  # output sizes are rounded up to a multiple of this; each bucket is one captured graph
POST_ROWS = 512  # post-processing rows per step (one step up to 512 rows: the common sizes pay nothing)


@lru_cache(maxsize=64)
def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [out, K] and fixed-point weights [out, K] of Pillow's bilinear resize along one axis.

    Mirrors Resample.c (precompute_coeffs + normalize_coeffs_8bpc) operation by operation in float64, so the
    weights are the very integers Pillow uses; unused taps get weight 0 and a valid index.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle filter's support is 1
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    used = taps[None, :] < xmax[:, None]
    source = (taps[None, :] + xmin[:, None]).astype(np.float64)
    distance = np.abs((source - center[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where(used & (distance < 1.0), 1.0 - distance, 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(ksize):  # Pillow sums tap by tap; numpy's pairwise sum could round differently
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = np.trunc(0.5 + weights * (1 << PRECISION_BITS)).astype(np.int32)  # weights are never negative
    index = np.minimum(taps[None, :] + xmin[:, None], in_size - 1)
    return index, np.where(used, fixed, 0).astype(np.int32)


def resample_axis(image: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """One Pillow pass over uint8 H×W×C along `axis` (0 rows, 1 columns): Σ pixel·weight, rounded, clipped."""
    import torch

    out_size, taps = index.shape
    gathered = image.index_select(axis, index.reshape(-1)).to(torch.int32)
    if axis == 0:
        gathered = gathered.view(out_size, taps, *image.shape[1:])
        products = gathered * weights.view(out_size, taps, 1, 1)
    else:
        gathered = gathered.view(image.shape[0], out_size, taps, image.shape[2])
        products = gathered * weights.view(1, out_size, taps, 1)
    total = products.sum(dim=axis + 1, dtype=torch.int32) + (1 << (PRECISION_BITS - 1))
    return (total >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_like_pil(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 H×W×3 → `size` (height, width), exactly as Pillow's bilinear resize: columns first, then rows."""
    height, width = size
    out = image
    if width != image.shape[1]:
        out = resample_axis(out, *device_taps(image.shape[1], width, image.device), axis=1)
    if height != image.shape[0]:
        out = resample_axis(out, *device_taps(image.shape[0], height, image.device), axis=0)
    return out


@lru_cache(maxsize=64)
def device_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """pil_bilinear_taps on `device`, uploaded once (a pageable upload would wait for the device's queue)."""
    import torch

    return cast("tuple[torch.Tensor, torch.Tensor]",  # pil_bilinear_taps gives two arrays
                tuple(torch.from_numpy(array).to(device) for array in pil_bilinear_taps(in_size, out_size)))


def colourise(class_map: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """uint8 H×W class ids → H×W×3 colours through a 256×3 uint8 table (visuals.colour_mask)."""
    import torch

    return lut[class_map.to(torch.int64)]


def blend(image: torch.Tensor, mask: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """visuals.overlay through its own 65 536-entry table: photo·256 + mask indexes the blended byte."""
    import torch

    pairs = (image.to(torch.int32) << 8) | mask.to(torch.int32)
    return table[pairs]


def rgb_to_i420(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 H×W×3 RGB (H a multiple of 4, W even) → I420 as H.264 takes it (yuv420p: Y, then U and V at half size,
    flat in (H·3/2)×W rows), as libswscale converts rgb24 (tests/test_torch_ops.py: within 1 level): BT.601 limited
    range; chroma from pairs of columns averaged, then rows filtered 1-3-3-1 (its bilinear 2:1, edges repeated)."""
    import torch

    height, width = rgb.shape[:2]
    r, g, b = rgb.to(torch.int32).unbind(-1)
    luma = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    pairs = rgb.to(torch.float32).reshape(height, width // 2, 2, 3).mean(2)
    padded = torch.cat([pairs[:1], pairs, pairs[-1:]])  # row k is the image's row k - 1
    rows = (padded[0:height:2] + 3 * padded[1:height + 1:2] + 3 * padded[2:height + 2:2] + padded[3:height + 3:2]) / 8
    r2, g2, b2 = rows.unbind(-1)
    cb = torch.floor((-38 * r2 - 74 * g2 + 112 * b2) / 256 + 128.5)
    cr = torch.floor((112 * r2 - 94 * g2 - 18 * b2) / 256 + 128.5)
    return torch.cat([luma.flatten(), cb.flatten().to(torch.int32), cr.flatten().to(torch.int32)]).clamp(0, 255) \
        .to(torch.uint8).view(height * 3 // 2, width)


# Limited-range Y'CbCr → R'G'B' (rows R, G, B; columns Y − 16, Cb − 128, Cr − 128) of the matrices PyAV's frames are
# converted with: libswscale's BT.601 (untagged and 601 streams) and BT.709.
YCC_MATRICES = {
    "bt601": ((255 / 219, 0.0, 255 / 224 * 1.402), (255 / 219, -255 / 224 * 1.772 * 0.114 / 0.587,
              -255 / 224 * 1.402 * 0.299 / 0.587), (255 / 219, 255 / 224 * 1.772, 0.0)),
    "bt709": ((255 / 219, 0.0, 255 / 224 * 1.5748), (255 / 219, -255 / 224 * 1.8556 * 0.0722 / 0.7152,
              -255 / 224 * 1.5748 * 0.2126 / 0.7152), (255 / 219, 255 / 224 * 1.8556, 0.0)),
}


def nv12_to_rgb(nv12: torch.Tensor, height: int, width: int, matrix: str = "bt601") -> torch.Tensor:
    """A decoder's NV12 surface ((H·3/2)×W: Y rows, then interleaved Cb Cr at half size; H and W even) → uint8 H×W×3
    RGB as PyAV's rgb24 of the same 4:2:0 frame (libswscale: each chroma sample for its 2×2 block), within 2 levels
    (tests/test_torch_ops.py)."""
    import torch

    luma = nv12[:height, :width].to(torch.float32) - 16
    chroma = nv12[height:height + height // 2, :width].reshape(height // 2, width // 2, 2).to(torch.float32) - 128
    chroma = chroma.repeat_interleave(2, 0).repeat_interleave(2, 1)
    cb, cr = chroma[..., 0], chroma[..., 1]
    # Elementwise, in fp32 (a 3-wide matmul could run in TF32). libswscale's table-based conversion lands about half
    # a level below the exact value: measured, its difference is smallest rounding down from half a level lower.
    channels = [y * luma + b * cb + r * cr - 0.5 for y, b, r in YCC_MATRICES[matrix]]
    return torch.floor(torch.stack(channels, -1)).clamp(0, 255).to(torch.uint8)


def class_counts(class_map: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Pixels per class id (int64 [bins]), the legend's bincount.

    histc with a fixed range needs no device→host sync (bincount reads the maximum first) and counts in shared
    memory (scatter_add's atomics pile up on the few classes a photo has); counts below 2^24 are exact in float32,
    so larger maps (up to 64 MP) are counted in chunks.
    """
    import torch

    flat = class_map.reshape(-1)
    total = None
    for start in range(0, max(flat.numel(), 1), COUNT_CHUNK):
        counts = torch.histc(flat[start:start + COUNT_CHUNK].to(torch.float32), bins=bins, min=0, max=bins)
        counts = counts.to(torch.int64)
        total = counts if total is None else total + counts
    return cast("torch.Tensor", total)  # the loop runs at least once


COUNT_CHUNK = (1 << 24) - 1  # float32 counts stay exact below 2^24


def gather_nearest(class_map: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """classmap.restore_size on the device: rows and columns are classmap.nearest_indices of each axis."""
    return class_map.index_select(0, rows).index_select(1, columns)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1–8) to H×W×C pixels exactly as ImageOps.exif_transpose does."""
    import torch

    if orientation == 1:
        return image
    steps = {  # the Image.Transpose step ImageOps.exif_transpose takes for each orientation
        2: lambda x: x.flip(1),  # FLIP_LEFT_RIGHT
        3: lambda x: x.flip(0).flip(1),  # ROTATE_180
        4: lambda x: x.flip(0),  # FLIP_TOP_BOTTOM
        5: lambda x: x.transpose(0, 1),  # TRANSPOSE
        6: lambda x: torch.rot90(x, -1, (0, 1)),  # ROTATE_270 (counter-clockwise), i.e. a quarter clockwise
        7: lambda x: x.flip(0).flip(1).transpose(0, 1),  # TRANSVERSE
        8: lambda x: torch.rot90(x, 1, (0, 1)),  # ROTATE_90 (counter-clockwise)
    }
    if orientation not in steps:
        raise ValueError(f"EXIF orientation {orientation} is not 1–8")
    return steps[orientation](image).contiguous()



# ------------------------------------------------------------------------------------------- JPEG colour (libjpeg)
# What libjpeg-turbo (Pillow's decoder) does after the inverse DCT, so a GPU decoder's raw Y/Cb/Cr planes give
# Pillow's pixels: "fancy" (triangle-filter) chroma upsampling (jdsample.c) and fixed-point YCbCr → RGB (jdcolor.c).
SCALEBITS = 16


@lru_cache(maxsize=1)
def ycc_tables() -> np.ndarray:
    """int64 [4, 256]: jdcolor.c's Cr→R, Cb→B, Cr→G and Cb→G (with its rounding half) tables."""
    def fix(value: float) -> int:
        return int(value * (1 << SCALEBITS) + 0.5)

    x = np.arange(256, dtype=np.int64) - 128
    half = 1 << (SCALEBITS - 1)
    return np.stack([(fix(1.40200) * x + half) >> SCALEBITS, (fix(1.77200) * x + half) >> SCALEBITS,
                     -fix(0.71414) * x, -fix(0.34414) * x + half])


def ycc_to_rgb(luma: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """uint8 planes of one size → H×W×3 RGB exactly as libjpeg's ycc_rgb_convert (tables: ycc_tables())."""
    import torch

    y = luma.to(torch.int64)
    cb, cr = cb.to(torch.int64), cr.to(torch.int64)
    red = y + tables[0][cr]
    green = y + ((tables[3][cb] + tables[2][cr]) >> SCALEBITS)
    blue = y + tables[1][cb]
    return torch.stack([red, green, blue], dim=-1).clamp_(0, 255).to(torch.uint8)


def _neighbours(values: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous and next entries along `dim`, edges repeated (libjpeg's context rows and end columns)."""
    import torch

    first, last = values.narrow(dim, 0, 1), values.narrow(dim, values.shape[dim] - 1, 1)
    size = values.shape[dim]
    previous = torch.cat([first, values.narrow(dim, 0, size - 1)], dim=dim)
    following = torch.cat([values.narrow(dim, 1, size - 1), last], dim=dim)
    return previous, following


def _interleave(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    import torch

    stacked = torch.stack([even, odd], dim=dim + 1)
    shape = list(even.shape)
    shape[dim] *= 2
    return stacked.reshape(shape)


def fancy_upsample(plane: torch.Tensor, vertical: int, horizontal: int, size: tuple[int, int]) -> torch.Tensor:
    """libjpeg's triangle-filter upsampling of a chroma plane by 1 or 2 per axis (h2v1 / h2v2), cropped to `size`."""
    import torch

    p = plane.to(torch.int32)
    if vertical == 2 and horizontal == 2:  # h2v2_fancy_upsample: column sums of 3·nearer + further row
        above, below = _neighbours(p, 0)
        sums = _interleave(3 * p + above, 3 * p + below, dim=0)
        left, right = _neighbours(sums, 1)
        out = _interleave((3 * sums + left + 8) >> 4, (3 * sums + right + 7) >> 4, dim=1)
    elif vertical == 1 and horizontal == 2:  # h2v1_fancy_upsample
        left, right = _neighbours(p, 1)
        out = _interleave((3 * p + left + 1) >> 2, (3 * p + right + 2) >> 2, dim=1)
    elif vertical == 1 and horizontal == 1:
        out = p
    else:
        raise ValueError(f"no fancy upsampling for {horizontal}×{vertical} subsampling")
    return out[: size[0], : size[1]].to(torch.uint8)


def jpeg_planes_to_rgb(planes: torch.Tensor, sampling: tuple[int, int], tables: torch.Tensor) -> torch.Tensor:
    """A decoder's raw output [3, H, W] (Y full size; Cb, Cr downsampled into their top-left corner, as nvJPEG's
    "unchanged" format leaves them) → H×W×3 RGB as libjpeg-turbo makes it. `sampling`: (vertical, horizontal)."""
    height, width = planes.shape[1:]
    vertical, horizontal = sampling
    chroma = (-(-height // vertical), -(-width // horizontal))
    cb, cr = (fancy_upsample(planes[c, : chroma[0], : chroma[1]], vertical, horizontal, (height, width))
              for c in (1, 2))
    return ycc_to_rgb(planes[0], cb, cr, tables)


# ------------------------------------------------------------------------------ logits → class ids, bucketed


def bucket(size: tuple[int, int]) -> tuple[int, int]:
    """The padded output size whose graph serves `size`."""
    return cast("tuple[int, int]", tuple(-(-side // BUCKET) * BUCKET for side in size))


def source_coordinates(in_size: int, out_size: int, padded: int) -> np.ndarray:
    """Where each output pixel samples the input, exactly as torch's bilinear upsample (align_corners=False).

    Returned as grid_sample's normalised coordinates (align_corners=False, border padding clamps like upsample);
    entries past `out_size` repeat the last one and are cropped later.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.minimum(np.arange(padded, dtype=np.float32), np.float32(out_size - 1))
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    return ((np.float32(2.0) * src + np.float32(1.0)) / np.float32(in_size) - np.float32(1.0)).astype(np.float32)


def upsample_argmax(logits: torch.Tensor, grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
    """fp32 logits [1,C,h,w] → uint8 class ids [H,W] at the sampling coordinates (one fused gather, then argmax).

    Runs POST_ROWS rows at a time: the upsampled [C,rows,W] fp32 block is the peak memory (2.5 GB whole at 2048²).
    """
    import torch
    from torch.nn import functional

    height, width = grid_y.shape[0], grid_x.shape[0]
    parts = []
    for top in range(0, height, POST_ROWS):
        rows = grid_y[top:top + POST_ROWS]
        grid = torch.stack((grid_x[None, :].expand(rows.shape[0], width), rows[:, None].expand(rows.shape[0], width)),
                           dim=-1)
        upsampled = functional.grid_sample(logits, grid[None], mode="bilinear", padding_mode="border",
                                           align_corners=False)
        parts.append(upsampled[0].argmax(dim=0).to(torch.uint8))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
