"""TensorRT sessions on a real GPU; each test skips with the backend's own reason where it cannot run."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from segdemo import backends, engine_cache
from segdemo.backends import LoadContext
from segdemo.backends.tensorrt.engine_build import PROFILE
from segdemo.backends.tensorrt.loader import EngineLoader
from segdemo.backends.tensorrt.runner import TensorRTRunner
from segdemo.graph.export import INPUT_IMAGE, INPUT_SIZE, ensure_onnx
from segdemo.graph.fp16 import run_onnx
from segdemo.image.preprocess import ModelInput
from segdemo.model.source import resolve
from segdemo.pipeline import Session
from segdemo.profiling.spans import LAYER, SpanRecorder

from .conftest import photo

pytestmark = pytest.mark.gpu

FLAVOURS = ("tensorrt", "tensorrt-rtx")


def usable(name: str) -> None:
    rung = backends.probe(name)
    if not rung.available:
        pytest.skip(f"{name}: {rung.reason}")


@pytest.fixture(scope="module", params=FLAVOURS)
def name(request) -> str:
    """Each TensorRT flavour; requested before `tiny` so an unusable one skips before any export."""
    usable(request.param)
    return request.param


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    build = tmp_path_factory.mktemp("gpu-build")
    path, _ = ensure_onnx(resolve("random:tiny"), build)
    return path


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (512, 512), (300, 1000), (1536, 2048), (2048, 2048)])
def test_fp32_engine_matches_onnxruntime(name, size, tiny):
    backend = backends.create(name, tiny, SpanRecorder(), precision="fp32")
    try:
        image = pixels()
        ours = backend.run(ModelInput(image, size, size), SpanRecorder())
        expected = run_onnx(tiny, image, size)[0]
        assert ours.shape == size and ours.dtype == np.uint8
        assert (ours == expected).mean() >= 0.999
    finally:
        backend.close()


def test_fp16_engine_accuracy_is_recorded(name, tiny):
    backend = backends.create(name, tiny, SpanRecorder(), precision="fp16")
    try:
        meta = json.loads(engine_cache.sidecar_path(backend.artifact.plan).read_text())
        agreement = meta["accuracy"]["engine_agreement"]
        assert agreement is not None and 0 <= agreement <= 1
        # Below the bar the guard falls back to fp32 and says so; above it the session stays fp16.
        assert backend.precision == ("fp16" if agreement >= 0.99 else "fp32")
        assert bool(backend.notes) == (backend.precision == "fp32")
    finally:
        backend.close()


def test_device_and_layer_spans(name, tiny):
    backend = backends.create(name, tiny, SpanRecorder(), precision="fp32")
    try:
        spans = SpanRecorder()
        backend.run(ModelInput(pixels(), (480, 640), (480, 640)), spans, detailed=True)
        names = {s.name for s in spans.spans}
        assert {"gpu upload", "gpu execute", "gpu download", "tensorrt run"} <= names
        layers = [s for s in spans.spans if s.category == LAYER]
        assert layers and all(s.duration_ns >= 0 for s in layers)
        run = next(s for s in spans.spans if s.name == "tensorrt run")
        assert run.attrs["execute_ms"] > 0
        plain = SpanRecorder()
        backend.run(ModelInput(pixels(), (480, 640), (480, 640)), plain)
        assert not [s for s in plain.spans if s.category == LAYER], "layer profiling must be opt-in"
    finally:
        backend.close()


def test_undeserializable_plan_is_rebuilt_on_load(name, tiny, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny.parent, build / "onnx")
    onnx_file = build / "onnx" / tiny.name
    first = backends.create(name, onnx_file, SpanRecorder(), precision="fp32")
    plan = first.artifact.plan
    first.close()
    # Garbage with a sidecar that vouches for it: only deserialization can tell, and it must heal.
    junk = b"not a TensorRT plan" * 1000
    plan.write_bytes(junk)
    meta = json.loads(engine_cache.sidecar_path(plan).read_text())
    engine_cache.store(plan, junk, {k: v for k, v in meta.items() if k != "plan"})
    healed = backends.create(name, onnx_file, SpanRecorder(), precision="fp32")
    try:
        assert not healed.artifact.cache_hit and plan.stat().st_size != len(junk)
        size = (64, 48)
        assert healed.run(ModelInput(pixels(), size, size), SpanRecorder()).shape == size
    finally:
        healed.close()


def test_runner_from_a_prebuilt_plan_alone(name, tiny):
    """The loader builds and checks the plan; a runner made from the plan file alone gives the same class maps."""
    loaded, runner = EngineLoader(tiny, name).load("fp32", SpanRecorder(), TensorRTRunner)
    runner.close()
    assert loaded.engine is None, "closing the runner releases the engine it owns"
    spans = SpanRecorder()
    plain = TensorRTRunner.from_plan(loaded.artifact.plan, name, spans)
    try:
        assert {"deserialize engine", "create context"} <= {s.name for s in spans.spans}
        assert plain.max_out == tuple(PROFILE["out_size"]["max"]) and plain.precision == "fp32"
        image = pixels(3)
        for size in ((7, 5), (300, 1000)):
            expected = run_onnx(tiny, image, size)[0]
            assert (plain.run(ModelInput(image, size, size), SpanRecorder()) == expected).mean() >= 0.999
    finally:
        plain.close()
    plain.close()  # twice is fine


def test_facts_describe_the_engine_cache_entry(name, tiny):
    with backends.create(name, tiny, SpanRecorder(), precision="fp32") as backend:
        facts = backend.facts()
        assert str(backend.artifact.plan) in facts["Engine"] and facts["Engine key"].startswith("`")
        assert facts["Device memory"].endswith(" MB") and "agreement" in facts["Accuracy guard"]


# Batching (max_batch > 1): the batched network plan and the per-image post-processing plan.

MIXED = ((7, 5), (300, 1000), (512, 512), (2048, 1536))  # output sizes riding in one batch


def create_batched(name: str, tiny, max_batch: int = 4, precision: str = "fp32"):
    context = LoadContext(resolve("random:tiny"), tiny.parent.parent)
    return backends.create(name, tiny, SpanRecorder(), context, precision=precision, max_batch=max_batch)


@pytest.fixture(scope="module")
def batched(name, tiny):
    backend = create_batched(name, tiny)
    yield backend
    backend.close()


def test_batched_engine_gives_each_image_its_pixels_alone(name, tiny, batched):
    """fp32: every image of a batch with mixed output sizes gets exactly what it gets alone (a batch of one, which is
    also what `run` gives), and what the unbatched plan and ONNX Runtime give."""
    inputs = [ModelInput(pixels(seed), size, size) for seed, size in enumerate(MIXED)]
    spans = SpanRecorder()
    together = batched.run_batch(inputs, spans)
    (run,) = [s for s in spans.spans if s.name == "tensorrt run"]
    assert run.attrs["batch"] == 4 and run.attrs["network_ms"] > 0
    assert {"gpu upload", "gpu network", "gpu postprocess", "gpu download"} <= {s.name for s in spans.spans}
    with backends.create(name, tiny, SpanRecorder(), precision="fp32") as single:
        for model_input, ours in zip(inputs, together, strict=True):
            size = model_input.out_size
            assert ours.shape == size and ours.dtype == np.uint8
            alone = batched.run_batch([model_input], SpanRecorder())[0]
            assert np.array_equal(ours, alone), f"{size}: the pixels changed with the batch"
            assert np.array_equal(batched.run(model_input, SpanRecorder()), alone), "run is not a batch of one"
            fused = single.run(model_input, SpanRecorder())
            print(f"\n{name} {size}: batched vs unbatched plan {(ours == fused).mean() * 100:.4f} %")
            assert (ours == fused).mean() >= 0.999
            assert (ours == run_onnx(tiny, model_input.pixels, size)[0]).mean() >= 0.999


def test_batch_profile_read_back_from_the_engines(name, tiny, batched):
    shapes = [tuple(d) for d in batched.loaded.engine.get_tensor_profile_shape(INPUT_IMAGE, 0)]
    assert shapes == [(1, 512, 512, 3), (4, 512, 512, 3), (4, 512, 512, 3)]
    post = batched.loaded.post.engine
    assert [list(v) for v in post.get_tensor_profile_values(0, INPUT_SIZE)] == list(PROFILE["out_size"].values())
    assert "up to 4 requests" in batched.facts()["Batching"]
    eight = create_batched(name, tiny, max_batch=8)
    try:
        assert eight.artifact.plan != batched.artifact.plan and eight.loaded.post.artifact.cache_hit
        assert [tuple(d) for d in eight.loaded.engine.get_tensor_profile_shape(INPUT_IMAGE, 0)][2][0] == 8
        outputs = eight.run_batch([ModelInput(pixels(k), (64, 48), (64, 48)) for k in range(8)], SpanRecorder())
        assert [m.shape for m in outputs] == [(64, 48)] * 8
    finally:
        eight.close()


def test_second_batched_load_is_a_cache_hit(name, tiny, batched):
    with create_batched(name, tiny) as again:
        assert again.artifact.cache_hit and again.loaded.post.artifact.cache_hit
        assert again.artifact.plan == batched.artifact.plan
        accuracy = again.artifact.sidecar["accuracy"]
        assert accuracy["engine_agreement"] is not None, "the first load measures the pair against ONNX Runtime"


def test_batched_fp16_accuracy_is_recorded(name, tiny):
    with create_batched(name, tiny, precision="fp16") as backend:
        agreement = backend.artifact.sidecar["accuracy"]["engine_agreement"]
        assert agreement is not None and 0 <= agreement <= 1
        assert backend.precision == ("fp16" if agreement >= 0.99 else "fp32")
        assert backend.loaded.post.precision == "fp32"  # post-processing stays fp32, as in the fused fp16 graph


def test_batched_layer_spans(name, batched):
    spans = SpanRecorder()
    batched.run(ModelInput(pixels(), (480, 640), (480, 640)), spans, detailed=True)
    layers = [s for s in spans.spans if s.category == LAYER]
    assert layers and all(s.duration_ns >= 0 for s in layers)


def test_session_batches_requests_on_tensorrt(name, tiny):
    """The pipeline's batcher on the TensorRT backend: batches form, hold several output sizes, change no pixels."""
    sizes = (("astronaut", (300, 400)), ("coffee", (512, 512)), ("chelsea", (700, 500)), ("rocket", (256, 384)))
    images = [photo(n, s) for n, s in sizes] * 3
    with Session("random:tiny", name, "fp32", build_dir=tiny.parent.parent, max_batch=4, batch_window_ms=50) as session:
        alone = [session.segment(image).class_map for image in images]
        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(session.segment, images))
    batches = [[s.attrs for s in r.spans.spans if s.name == "batch"][0] for r in together]
    assert max(b["size"] for b in batches) > 1, f"no batch formed: {batches}"
    for single, result in zip(alone, together, strict=True):
        assert np.array_equal(result.class_map, single), "a request's pixels changed with the batch it rode in"
