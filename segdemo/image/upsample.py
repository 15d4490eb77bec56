"""Class map from low-resolution logits: what ONNX Resize (linear, pytorch_half_pixel) of every channel to the output
size followed by ArgMax (first maximum) gives, with most pixels never upsampled.

An upsampled logit vector is ONNX Runtime's weighted sum of its 4 low-resolution neighbours (weights ≥ 0), evaluated
in float32 by a formula that is non-decreasing in each neighbour's value. So where all 4 neighbours have the same
argmax with a top-two gap well above float32 rounding, every output pixel between them has that class (`SAFE_GAP`).
Elsewhere each pixel evaluates ONNX Runtime's own formula for its candidates (each neighbour's top classes, `STAGES`)
and an upper bound for every other class (the same formula on each neighbour's next-largest logit); a pixel whose
best candidate does not beat that bound tries more candidates, then all classes. The result is ONNX Runtime's class
map, pixel for pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

STAGES = (1, 3)  # candidate classes per low-resolution neighbour, tried in turn before all classes
# A neighbour agreement is trusted when the smallest top-two gap exceeds this times the largest |top logit|: the
# float32 sum of 4 products errs by at most 2^-22 of its magnitude on each side (Higham's γ4), so 2^-19 leaves a
# factor of 4 to spare.
SAFE_GAP = 2.0**-19
CHUNK = 1 << 16  # output pixels per step: bounded memory at any output size
FULL_CHUNK = 1 << 11  # pixels per step of the evaluation of every class (4 × C logits each)


@dataclass
class UpsampleCounts:
    """How many output pixels each step decided: neighbours' consensus, candidates against the bound, all classes."""

    consensus: int = 0
    candidates: int = 0
    full: int = 0


@dataclass(frozen=True)
class AxisWeights:
    """One axis of ONNX Runtime's bilinear Resize: each output index's two input neighbours and their weights."""

    low: np.ndarray  # intp [n_out]: the lower neighbour (ORT's in_x1)
    high: np.ndarray  # intp [n_out]: min(low + 1, n_in - 1) (ORT's in_x2)
    w_low: np.ndarray  # float32 [n_out]: weight of `low` (ORT's dx2 = |x - high|)
    w_high: np.ndarray  # float32 [n_out]: weight of `high` (ORT's dx1 = |x - low|)


@lru_cache(maxsize=32)
def axis_weights(n_in: int, n_out: int) -> AxisWeights:
    """ONNX Runtime's SetupUpsampleBilinear for one axis, in its float32 arithmetic (pytorch_half_pixel, clamped)."""
    f32 = np.float32
    out = np.arange(n_out, dtype=f32)
    scale = f32(n_out) / f32(n_in)  # ORT derives the scale from the sizes, in float32
    if scale == 1:
        coord = out
    elif n_out > 1:
        coord = (out + f32(0.5)) / scale - f32(0.5)
    else:  # pytorch_half_pixel maps a single output pixel to coordinate 0
        coord = np.zeros(1, f32)
    coord = np.maximum(f32(0), np.minimum(coord, f32(n_in - 1)))
    low = np.minimum(coord.astype(np.intp), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    w_high = np.abs(coord - low.astype(f32))
    w_low = np.abs(coord - high.astype(f32))
    same = low == high
    w_high[same] = w_low[same] = f32(0.5)
    for array in (low, high, w_low, w_high):
        array.flags.writeable = False  # shared through the cache
    return AxisWeights(low, high, w_low, w_high)


def class_map(logits: np.ndarray, out_size: tuple[int, int], counts: UpsampleCounts | None = None) -> np.ndarray:
    """uint8 [out_height, out_width]: ArgMax of the channels-last fp32 `logits` [h, w, C] resized to `out_size`."""
    h, w, _ = logits.shape
    rows, cols = axis_weights(h, out_size[0]), axis_weights(w, out_size[1])
    tops = _top_values(logits, max(STAGES) + 1)
    best = tops.index[..., 0]
    mixed = _mixed_cells(best, tops.value, np.unique(rows.low), np.unique(cols.low))
    # Every pixel first takes its cell's consensus (the top-left neighbour's class); mixed cells are redone below.
    classes = best.astype(np.uint8).take(cols.low, axis=1).take(rows.low, axis=0)
    cells = np.argwhere(mixed)
    cell_ids = np.full((h, w), -1, np.intp)
    cell_ids[mixed] = np.arange(len(cells))
    tables = cache(lambda stage: _cell_tables(logits, tops, cells, STAGES[stage]))  # later stages rarely needed
    tables(0)  # built before the threads need it

    def block(ys: np.ndarray, xs: np.ndarray, cell: np.ndarray) -> UpsampleCounts:
        step = UpsampleCounts()  # one per block: the threads never share one
        classes[ys[:, :, None], xs[:, None, :]] = _block(logits, tables, cell, ys, xs, rows, cols, step)
        return step  # blocks hold disjoint pixels, so their writes never meet

    steps = list(_pool().map(lambda args: block(*args), _blocks(mixed, cell_ids, rows, cols)))
    if counts is not None:
        counts.consensus += out_size[0] * out_size[1] - sum(s.candidates + s.full for s in steps)
        counts.candidates += sum(s.candidates for s in steps)
        counts.full += sum(s.full for s in steps)
    return classes


@cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the blocks: numpy lets go of the GIL inside its loops, so blocks use the cores ONNX Runtime used."""
    return ThreadPoolExecutor(max_workers=min(4, len(os.sched_getaffinity(0))), thread_name_prefix="segdemo upsample")


def _blocks(mixed: np.ndarray, cell_ids: np.ndarray, rows: AxisWeights,
            cols: AxisWeights) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The output pixels of the mixed cells as blocks (ys [g, r], xs [g, n], cell ids [g, n]): g cell rows, each with
    its output rows and the output columns of its mixed cells, so the pixels of a column share their cell's table.
    Cell rows of similar width go together (short rows and columns repeat their last entry: the same pixel twice)."""
    cell_rows = np.flatnonzero(mixed.any(axis=1))
    if not cell_rows.size:
        return
    first, last = np.searchsorted(rows.low, cell_rows), np.searchsorted(rows.low, cell_rows + 1)
    which, columns = np.nonzero(mixed[cell_rows][:, cols.low])  # output columns in mixed cells, per cell row
    widths = np.bincount(which, minlength=len(cell_rows))
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    order = np.argsort(widths, kind="stable")
    k = 0
    while k < len(order):
        g = 1  # grow the group while it stays within CHUNK pixels
        while k + g < len(order) and (g + 1) * widths[order[k + g]] * (last - first)[order[k:k + g + 1]].max() <= CHUNK:
            g += 1
        group = order[k:k + g]
        k += g
        width, height = widths[group].max(), (last - first)[group].max()
        xs = columns[starts[group][:, None] + np.minimum(np.arange(width), widths[group][:, None] - 1)]
        ys = np.minimum(first[group][:, None] + np.arange(height), last[group][:, None] - 1)
        cell = cell_ids[cell_rows[group][:, None], cols.low[xs]]
        step = max(1, CHUNK // (len(group) * width))  # one cell row alone may still cover many output rows
        for r0 in range(0, height, step):
            yield ys[:, r0:r0 + step], xs, cell


def _block(logits: np.ndarray, tables: Callable[[int], _Tables], cell: np.ndarray, ys: np.ndarray, xs: np.ndarray,
           rows: AxisWeights, cols: AxisWeights, counts: UpsampleCounts) -> np.ndarray:
    """uint8 [g, r, n]: the classes of the output pixels (ys[j, a], xs[j, b]), which lie in mixed cell cell[j, b]."""
    coefs = _coefficients(rows.w_low[ys][:, :, None], rows.w_high[ys][:, :, None], cols.w_low[xs][:, None, :],
                          cols.w_high[xs][:, None, :])
    decided, sure = _candidates(coefs, tables(0), cell[:, None, :])
    out = np.array(np.broadcast_to(decided, coefs.shape[1:]))
    fg, fr, fn = np.nonzero(~sure)  # the few pixels the first candidates leave open
    coefs, open_cells = coefs[:, fg, fr, fn], cell[fg, fn]
    open_ = np.arange(len(fg))
    for stage in range(1, len(STAGES)):
        if not open_.size:
            break
        decided, sure = _candidates(coefs[:, open_], tables(stage), open_cells[open_])
        done = open_[sure]
        out[fg[done], fr[done], fn[done]] = decided[sure]
        open_ = open_[~sure]
    if open_.size:
        y, x = ys[fg[open_], fr[open_]], xs[fg[open_], fn[open_]]
        out[fg[open_], fr[open_], fn[open_]] = _all_classes(logits, coefs[:, open_], rows, cols, y, x)
    # Counted once each: a repeated row or column (padding) is not a pixel of its own.
    new_y, new_x = np.diff(ys, axis=1, prepend=-1) != 0, np.diff(xs, axis=1, prepend=-1) != 0
    full = int((new_y[fg[open_], fr[open_]] & new_x[fg[open_], fn[open_]]).sum())
    counts.full += full
    counts.candidates += int((new_y.sum(axis=1) * new_x.sum(axis=1)).sum()) - full
    return out


@dataclass(frozen=True)
class _Tops:
    index: np.ndarray  # intp [h, w, n]: classes by rank (first index among equals), largest first
    value: np.ndarray  # float32 [h, w, n]: their logits


def _top_values(logits: np.ndarray, n: int) -> _Tops:
    """Each pixel's `n` largest logits and their classes (repeated argmax: n is small)."""
    flat = logits.reshape(-1, logits.shape[-1]).copy()
    pixels = np.arange(flat.shape[0])
    indices, values = [], []
    for _ in range(min(n, flat.shape[1])):
        index = flat.argmax(axis=1)
        values.append(flat[pixels, index])
        indices.append(index)
        flat[pixels, index] = -np.inf
    while len(values) < n:  # fewer classes than n: all are candidates, so the bound only needs to lie below them
        values.append(np.full(flat.shape[0], np.finfo(np.float32).min / 4, np.float32))  # finite: 0·-inf is NaN
        indices.append(indices[-1])
    shape = (*logits.shape[:2], n)
    return _Tops(np.stack(indices, axis=1).reshape(shape), np.stack(values, axis=1).reshape(shape))


def _corners(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """[h, w, 4] rows and columns of the 4 neighbours of every cell (i, j), in ORT's order (i, j), (i, j+1),
    (i+1, j), (i+1, j+1), +1 clamped at the last row and column."""
    i, j = np.arange(h)[:, None], np.arange(w)[None, :]
    i1, j1 = np.minimum(i + 1, h - 1), np.minimum(j + 1, w - 1)
    ys = np.stack(np.broadcast_arrays(i, i, i1, i1, j)[:4], axis=-1)  # j: broadcast to [h, w]
    xs = np.stack(np.broadcast_arrays(j, j1, j, j1, i)[:4], axis=-1)
    return ys, xs


def _mixed_cells(best: np.ndarray, values: np.ndarray, used_rows: np.ndarray, used_cols: np.ndarray) -> np.ndarray:
    """bool [h, w]: cells (by their top-left neighbour) some output pixel falls in whose neighbours do not agree
    safely: a different argmax, or a top-two gap within float32 rounding of the values."""
    ys, xs = _corners(*best.shape)
    agree = (best[ys, xs] == best[:, :, None]).all(axis=-1)
    gap = (values[..., 0] - values[..., 1])[ys, xs].min(axis=-1)
    size = np.abs(values[..., 0])[ys, xs].max(axis=-1)
    safe = agree & (gap > SAFE_GAP * size + np.finfo(np.float32).tiny)
    used = np.zeros(best.shape, bool)
    used[np.ix_(used_rows, used_cols)] = True
    return used & ~safe


@dataclass(frozen=True)
class _Tables:
    classes: np.ndarray  # uint8 [k, M]: each mixed cell's candidates (its neighbours' top classes), ascending
    values: np.ndarray  # float32 [4, k + 1, M]: the candidates' logits at each neighbour, then that neighbour's bound


def _cell_tables(logits: np.ndarray, tops: _Tops, cells: np.ndarray, top: int) -> _Tables:
    """For each mixed cell: its candidates, their logits at its 4 neighbours, and each neighbour's next-largest logit
    (no other class exceeds it there)."""
    ys, xs = _corners(*logits.shape[:2])
    cy, cx = ys[cells[:, 0], cells[:, 1]], xs[cells[:, 0], cells[:, 1]]  # [M, 4]
    candidates = np.sort(tops.index[cy, cx, :top].reshape(len(cells), 4 * top), axis=1)  # ascending: first maximum
    values = logits[cy[:, :, None], cx[:, :, None], candidates[:, None, :]]  # [M, 4, 4 * top]
    bound = tops.value[cy, cx, top][:, :, None]
    table = np.concatenate([values, bound], axis=-1).transpose(1, 2, 0)
    return _Tables(np.ascontiguousarray(candidates.T.astype(np.uint8)), np.ascontiguousarray(table))


def _candidates(coefs: np.ndarray, tables: _Tables, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first maximum among each pixel's candidates, whether it beats the bound for every other class); `cell`
    broadcasts against the pixels' shape, coefs [4, *shape]."""
    upsampled = _weighted(coefs[:, None], tables.values[:, :, cell])  # [k + 1, *shape]
    candidates, bound = upsampled[:-1], upsampled[-1]
    best = candidates.max(axis=0)
    # The lowest class among those at the maximum (ArgMax's first index): 255 stands for "not at it".
    first = np.where(candidates == best, tables.classes[:, cell], np.uint8(255)).min(axis=0)
    return first, best > bound


def _coefficients(wy0: np.ndarray, wy1: np.ndarray, wx0: np.ndarray, wx1: np.ndarray) -> np.ndarray:
    """float32 [4, *shape]: ORT's products dx·dy for the neighbours (low, low), (low, high), (high, low), (high, high)
    (the weights broadcast to the pixels' shape)."""
    return np.stack(np.broadcast_arrays(wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1))


def _weighted(coefs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """ORT's float32 sum c11·X11 + c21·X21 + c12·X12 + c22·X22, in its order: coefs [4, *shape], values [4, ...]
    broadcasting against them."""
    total = np.multiply(coefs[0], values[0], order="C")  # gathered operands have odd strides: keep reductions fast
    for corner in range(1, 4):
        total += coefs[corner] * values[corner]
    return total


def _all_classes(logits: np.ndarray, coefs: np.ndarray, rows: AxisWeights, cols: AxisWeights, y: np.ndarray,
                 x: np.ndarray) -> np.ndarray:
    """The plain computation for a few pixels: every class upsampled, then the first maximum."""
    out = np.empty(len(y), np.uint8)
    for s in range(0, len(y), FULL_CHUNK):
        part = slice(s, s + FULL_CHUNK)
        y0, y1, x0, x1 = rows.low[y[part]], rows.high[y[part]], cols.low[x[part]], cols.high[x[part]]
        values = np.stack([logits[y0, x0], logits[y0, x1], logits[y1, x0], logits[y1, x1]])  # [4, n, C]
        out[part] = _weighted(coefs[:, part, None], values).argmax(axis=1)
    return out
