"""The class map from low-resolution logits (image.upsample) against ONNX Runtime's own Resize + ArgMax of every
class (the fused graph's post-processing nodes, export.postprocess_nodes): equal pixel for pixel, on crafted logits
(ties, one-pixel structures, borders, up- and downsampling, 1×1 and odd sizes) and random ones; and the CPU
backend's class maps equal the fused graph's on real photos."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from segdemo.graph.batched import LOGITS, post_graph
from segdemo.graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from segdemo.image.upsample import UpsampleCounts, axis_weights, class_map

from .conftest import photo

_SESSIONS: dict = {}  # ONNX Runtime session per number of classes


def ort_class_map(logits: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """The full computation: ONNX Runtime resizes every class to `out_size` and takes the first maximum."""
    import onnxruntime as ort

    num = logits.shape[-1]
    if num not in _SESSIONS:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        _SESSIONS[num] = ort.InferenceSession(post_graph(num).SerializeToString(), options,
                                              providers=["CPUExecutionProvider"])
    session = _SESSIONS[num]
    (classes,) = session.run([OUTPUT_CLASSES], {LOGITS: np.ascontiguousarray(logits[None], np.float32),
                                                INPUT_SIZE: np.array(out_size, np.int64)})
    return classes[0]


def assert_same(logits: np.ndarray, out_size: tuple[int, int]) -> UpsampleCounts:
    counts = UpsampleCounts()
    mine = class_map(logits.astype(np.float32), out_size, counts)
    expected = ort_class_map(logits, out_size)
    assert mine.shape == expected.shape == out_size and mine.dtype == np.uint8
    wrong = np.argwhere(mine != expected)
    assert not len(wrong), f"{len(wrong)} pixels differ, first at {wrong[0].tolist()} (logits {logits.shape})"
    assert counts.consensus + counts.candidates + counts.full == out_size[0] * out_size[1]
    return counts


# Output sizes for logits of (h, w): the same, up (whole and fractional factors), down, one row/column/pixel.
def _out_sizes(h: int, w: int) -> list[tuple[int, int]]:
    return sorted({(h, w), (4 * h, 4 * w), (3 * h + 1, 2 * w - 1 if w > 1 else 5), (max(1, h // 2), max(1, w // 3)),
                   (1, 1), (1, 7), (6, 1), (37, 53), (2 * h + 3, w + 1)})


def _field(h: int, w: int, num: int, cls: int = 0, level: float = 1.0) -> np.ndarray:
    """Logits where class `cls` leads everywhere by `level` over a gently varying background."""
    rng = np.random.default_rng(h * 1000 + w)
    logits = rng.uniform(-2, -1, (h, w, num)).astype(np.float32)
    logits[..., cls] = level
    return logits


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 6, 4), (5, 1, 4), (2, 2, 2), (7, 5, 6), (16, 16, 150)])
def test_one_pixel_structures_and_borders(shape):
    h, w, num = shape
    base = _field(h, w, num)
    structures = []
    for i in {0, h // 2, h - 1}:  # a one-pixel row, at the top and bottom borders too
        s = base.copy()
        s[i, :, num - 1] = 2.0
        structures.append(s)
    for j in {0, w // 2, w - 1}:  # a one-pixel column
        s = base.copy()
        s[:, j, 1 % num] = 2.0
        structures.append(s)
    for i, j in {(0, 0), (h - 1, w - 1), (h // 2, w // 2)}:  # a single pixel, in corners too
        s = base.copy()
        s[i, j, num // 2] = 1.5
        structures.append(s)
    diagonal = base.copy()
    k = np.arange(min(h, w))
    diagonal[k, k, num - 1] = 3.0
    structures.append(diagonal)
    for logits in structures:
        for out_size in _out_sizes(h, w):
            assert_same(logits, out_size)


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 4, 3), (9, 7, 5), (16, 12, 150)])
def test_exact_ties_go_to_the_first_class(shape):
    h, w, num = shape
    rng = np.random.default_rng(7)
    cases = [
        np.zeros((h, w, num)),  # every class ties everywhere: class 0
        np.broadcast_to(rng.normal(size=num), (h, w, num)).copy(),  # the same vector everywhere
        rng.integers(0, 2, (h, w, num)).astype(np.float32),  # many ties among the top classes
        rng.integers(-2, 3, (h, w, num)).astype(np.float32) * 0.5,
    ]
    two = np.full((h, w, num), -1.0)
    two[..., num - 1] = two[..., num // 2] = 1.0  # two classes tie exactly at every pixel: the lower one
    two[: h // 2, :, num - 1] = 1.5  # and lead in turn elsewhere
    cases.append(two)
    near = _field(h, w, num)
    near[..., 1 % num] = np.nextafter(np.float32(1.0), np.float32(2.0))  # one ulp ahead: within rounding
    cases.append(near)
    for logits in cases:
        for out_size in _out_sizes(h, w):
            assert_same(logits, out_size)


@pytest.mark.parametrize("seed", range(4))
def test_random_logits_at_many_sizes(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    num = int(rng.choice([1, 2, 5, 150]))
    noisy = rng.normal(0, 3, (h, w, num))
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([np.sin(0.3 * yy * (c % 7 + 1) + 0.2 * xx * (c % 5)) for c in range(num)], axis=-1)
    for logits in (noisy, smooth * 10, smooth * 1e-3 + noisy * 1e-9):
        for out_size in [*_out_sizes(h, w), (int(rng.integers(1, 300)), int(rng.integers(1, 300)))]:
            assert_same(logits, out_size)


def test_every_way_of_deciding_a_pixel_is_exercised():
    """Smooth regions by consensus, boundaries by candidates, and ties among more classes than the candidates by all
    classes: each checked against the full computation above, so none of the three may be wrong unnoticed."""
    h, w, num = 16, 16, 150
    logits = _field(h, w, num, cls=3)  # class 3 leads on the left half, class 7 on the right
    logits[:, w // 2:, 3] = -1.5
    logits[:, w // 2:, 7] = 1.0
    counts = assert_same(logits, (64, 64))
    assert counts.consensus > 0 and counts.candidates > 0 and counts.full == 0
    ties = np.zeros((h, w, num))
    ties[::2, :, 5] = 1.0  # rows alternate between class 5 and a 150-way tie
    counts = assert_same(ties, (50, 70))
    assert counts.full > 0


def test_weights_follow_pytorch_half_pixel_with_clamping():
    """The spec's coordinate mapping, independently: x_in = (x + 0.5) / scale − 0.5 (0 for a 1-pixel output),
    clamped to [0, n_in − 1]; the neighbours' weights are 1 − frac and frac, and sum to 1."""
    for n_in, n_out in [(4, 16), (128, 1536), (7, 3), (5, 1), (1, 9), (3, 3)]:
        weights = axis_weights(n_in, n_out)
        x = np.arange(n_out, dtype=np.float64)
        coord = np.clip((x + 0.5) * n_in / n_out - 0.5, 0, n_in - 1) if n_out > 1 else np.zeros(1)
        assert np.array_equal(weights.low, np.minimum(np.floor(coord), n_in - 1).astype(int))
        assert np.array_equal(weights.high, np.minimum(weights.low + 1, n_in - 1))
        blended = weights.low * weights.w_low + weights.high * weights.w_high
        moving = weights.low != weights.high
        assert np.allclose(blended[moving], coord[moving], atol=1e-4)
        assert np.allclose(weights.w_low + weights.w_high, 1, atol=1e-6)


def test_a_large_output_never_holds_every_class_upsampled():
    """2048×1536 from 128×128×150 noise (the worst case: nearly every cell has neighbours that disagree). Upsampling
    every class would hold 150 × 3.1 M floats (1.9 GB); the class map stays within a few dozen MB."""
    logits = np.random.default_rng(3).normal(size=(128, 128, 150)).astype(np.float32)
    tracemalloc.start()
    try:
        classes = class_map(logits, (1536, 2048))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert classes.shape == (1536, 2048)
    assert peak < 120e6, f"peak {peak / 1e6:.0f} MB"
    assert_same(logits, (300, 400))  # the same logits, at a size the full computation can afford here


def test_the_cpu_backend_gives_the_fused_graphs_class_maps_on_photos(session_factory):
    """random:tiny on four photos, each at 1024×768 and at its own size: the backend (its network graph, then the
    class map on the host) and the fused graph (Resize + ArgMax of every class in ONNX Runtime) agree on every pixel —
    the logits are the same nodes' output and the class map is exact."""
    import onnxruntime as ort

    from segdemo.image.preprocess import prepare
    from segdemo.profiling.spans import SpanRecorder

    session = session_factory("random:tiny", "fp32")  # the fused graph is fp32's
    options = ort.SessionOptions()
    options.log_severity_level = 3
    fused = ort.InferenceSession(str(session.onnx_file), options, providers=["CPUExecutionProvider"])
    for name in ("coffee", "chelsea", "rocket", "astronaut"):
        for size in ((768, 1024), None):
            model_input = prepare(photo(name, size), session.source.input_size, session.max_side)
            (full,) = fused.run([OUTPUT_CLASSES], {INPUT_IMAGE: model_input.pixels,
                                                   INPUT_SIZE: np.array(model_input.out_size, np.int64)})
            spans = SpanRecorder()
            classes = session.backend.run(model_input, spans)
            assert classes.shape == full[0].shape == model_input.out_size
            assert np.array_equal(classes, full[0]), f"{name} {size}: {float((classes == full[0]).mean()):.6f} agree"
            (post,) = [s for s in spans.spans if s.name == "postprocess"]
            assert post.attrs["candidate_px"] > 0 and post.attrs["consensus_px"] > post.attrs["full_px"]
