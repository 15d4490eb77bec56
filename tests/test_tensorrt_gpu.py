"""TensorRT sessions on a real GPU; each test skips with the backend's own reason where it cannot run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from segdemo import backends, engine_cache
from segdemo.backends.tensorrt import TensorRTRunner
from segdemo.backends.tensorrt_loader import EngineLoader
from segdemo.engine_build import PROFILE
from segdemo.export import ensure_onnx
from segdemo.export_fp16 import run_onnx
from segdemo.model_source import resolve
from segdemo.preprocess import ModelInput
from segdemo.spans import LAYER, SpanRecorder

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
