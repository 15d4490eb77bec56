"""Dynamic batching: per-image results identical to unbatched runs (fp32), mixed sizes in one batch, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from segdemo import backends
from segdemo.errors import SegdemoError
from segdemo.pipeline import Session

from .conftest import photo

SIZES = (("astronaut", (300, 400)), ("coffee", (512, 512)), ("chelsea", (700, 500)), ("rocket", (256, 384)))


@pytest.fixture(scope="module")
def batched(build_dir):
    with Session("random:tiny", "onnxruntime", build=build_dir, max_batch=4, batch_window_ms=50) as session:
        yield session


def test_batched_and_unbatched_results_are_identical_per_image(batched, session_factory):
    images = [photo(name, size) for name, size in SIZES] * 3
    alone = [batched.segment(image).class_map for image in images]  # one at a time: batches of one
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(batched.segment, images))
    sizes = [[s.attrs["size"] for s in r.spans.spans if s.name == "batch"][0] for r in together]
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    mixed = {}  # batch number → output sizes that rode in it
    for result in together:
        (span,) = [s for s in result.spans.spans if s.name == "batch"]
        mixed.setdefault(span.attrs["batch"], set()).add(result.class_map.shape)
    assert any(len(shapes) > 1 for shapes in mixed.values()), "no batch held images of different sizes"
    for image, single, result in zip(images, alone, together, strict=True):
        assert result.class_map.shape == image.shape[:2]
        assert np.array_equal(result.class_map, single), "a request's pixels changed with the batch it rode in"
    # The split graphs agree with the fused graph of the unbatched backend (ONNX Runtime fuses across the split).
    fused = session_factory("random:tiny").segment(images[0]).class_map
    assert float((fused == alone[0]).mean()) > 0.9999


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_one_works(batched, monkeypatch):
    real = batched.backend.run_batch
    calls = []

    def broken(inputs, spans):
        calls.append(len(inputs))
        if len(calls) == 1:
            raise RuntimeError("engine fault")
        return real(inputs, spans)

    monkeypatch.setattr(batched.backend, "run_batch", broken)
    with pytest.raises(RuntimeError, match="engine fault"):
        batched.segment(photo("coffee", (200, 300)))
    assert batched.segment(photo("coffee", (200, 300))).class_map.shape == (200, 300)


def test_a_lone_request_does_not_wait_for_the_window(build_dir):
    with Session("random:tiny", "onnxruntime", build=build_dir, max_batch=4, batch_window_ms=60_000) as session:
        result = session.segment(photo("rocket", (128, 160)))  # nothing else in flight: no reason to wait 60 s
        assert result.info["infer_ms"] < 30_000
        (span,) = [s for s in result.spans.spans if s.name == "batch"]
        assert span.attrs["size"] == 1


def test_a_backend_without_batches_refuses_max_batch(build_dir):
    with pytest.raises(SegdemoError, match="has no option max_batch"):
        backends.create("tensorrt-rtx", build_dir / "missing.onnx", None, max_batch=4)
