"""Batched TensorRT plans, really built by TensorRT-RTX ahead of time (no GPU needed): the graphs they come from, the
batch profile in the plan, its sidecar and cache key, cache hits and rebuilds. Running them: tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from segdemo import backends, engine_cache
from segdemo.backends import LoadContext
from segdemo.backends.tensorrt import loader as loader_module
from segdemo.backends.tensorrt.batched_graphs import ensure_tensorrt_batched_onnx, run_batched
from segdemo.backends.tensorrt.engine_build import PROFILE, batch_profile, ensure_batch_engines, ensure_engine
from segdemo.backends.tensorrt.loader import EngineLoader
from segdemo.errors import SegdemoError
from segdemo.graph.batched import LOGITS, ensure_batched_onnx
from segdemo.graph.export import INPUT_IMAGE, INPUT_SIZE, ensure_onnx
from segdemo.graph.fp16 import graph_check, run_onnx
from segdemo.model.source import resolve
from segdemo.profiling.spans import SpanRecorder

from .conftest import corrupt_keeping_size

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is in requirements.txt; install it to run these")

RTX = "tensorrt-rtx"
SIZE = (512, 512)  # random:tiny's input size


@pytest.fixture(scope="module")
def source():
    return resolve("random:tiny")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, source) -> tuple[Path, Path, Path]:
    """(build folder, fused fp32 graph, graph.batched's network graph) of random:tiny."""
    build = tmp_path_factory.mktemp("batch-engines")
    fused, _ = ensure_onnx(source, build)
    network, _ = ensure_batched_onnx(source, build)
    return build, fused, network


def profile_in_plan(plan: Path, bounds: dict[str, list[int]]) -> bool:
    """Whether the plan's bytes hold the min, opt and max shapes in that order, as TensorRT serialises Dims (rank,
    then int64 dimensions). Not a documented format — evidence where the plan cannot be deserialised (no GPU); the GPU
    tests read the profile back through ICudaEngine.get_tensor_profile_shape."""
    data, position = plan.read_bytes(), 0
    for shape in (bounds["min"], bounds["opt"], bounds["max"]):
        needle = np.array([len(shape), *shape], dtype=np.int64).tobytes()
        position = data.find(needle, position)
        if position < 0:
            return False
        position += len(needle)
    return True


def test_tensorrt_form_of_the_batched_graphs(graphs):
    """Channels-first logits into a channels-first upsampling, fp16 as the fused graph's, and the same pixels."""
    _, fused, network = graphs
    net32, post = ensure_tensorrt_batched_onnx(network, fused, "fp32")
    net16, post16 = ensure_tensorrt_batched_onnx(network, fused, "fp16")
    assert post16 == post and net16 != net32, "one post graph for both precisions"
    model = onnx.load(str(net32))
    (output,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert output.name == LOGITS and dims == ["batch", 150, 128, 128]  # [N, C, H/4, W/4]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    post_model = onnx.load(str(post))
    assert [i.name for i in post_model.graph.input] == [LOGITS, INPUT_SIZE]
    resize = next(n for n in post_model.graph.node if n.op_type == "Resize")
    argmax = next(n for n in post_model.graph.node if n.op_type == "ArgMax")
    assert resize.input[0] == LOGITS and [a.i for a in argmax.attribute if a.name == "axis"] == [1]
    assert not [n for n in post_model.graph.node if n.op_type == "Transpose"]
    fp16 = onnx.shape_inference.infer_shapes(onnx.load(str(net16)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*fp16.graph.value_info, *fp16.graph.output]}
    types.update({t.name: t.data_type for t in fp16.graph.initializer})
    for node in fp16.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
        if node.op_type in ("MatMul", "Conv"):
            assert types[node.output[0]] == onnx.TensorProto.FLOAT16, node.name
    assert types[LOGITS] == onnx.TensorProto.FLOAT  # the post graph takes fp32 logits at either precision
    assert graph_check(net32)["agreement"] == 1.0 and graph_check(net16)["agreement"] >= 0.99
    # On ONNX Runtime: a batch of mixed output sizes gives each image what it gets alone and what the fused graph gives.
    pixels = np.random.default_rng(3).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    sizes = [(7, 5), (300, 1000), (512, 512)]
    together = run_batched(net32, post, pixels, sizes)
    for i, size in enumerate(sizes):
        assert together[i].shape == size
        assert np.array_equal(together[i], run_batched(net32, post, pixels[i:i + 1], [size])[0])
        assert (together[i] == run_onnx(fused, pixels[i:i + 1], size)[0]).mean() >= 0.9999


def test_batch_profile_is_in_the_plan_its_key_and_sidecar(graphs):
    build, fused, network = graphs
    start = time.perf_counter()
    net, post = ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, build)
    built = time.perf_counter() - start
    assert not net.cache_hit and "-batched-fp32-" in net.plan.name and "-post-" in post.plan.name
    bounds = {"min": [1, *SIZE, 3], "opt": [4, *SIZE, 3], "max": [4, *SIZE, 3]}
    assert net.sidecar["profile"] == {INPUT_IMAGE: bounds} == batch_profile(SIZE, 4)
    assert net.sidecar["key_parts"]["profile"] == net.sidecar["profile"]
    assert net.sidecar["key"] == engine_cache.engine_key(net.sidecar["key_parts"])
    assert net.sidecar["precision"] == "fp32" and net.sidecar["onnx"]["fused_fp32"] == fused.name
    assert net.sidecar["accuracy"]["onnx_vs_fp32"]["agreement"] == 1.0  # the pair, on ONNX Runtime
    assert post.sidecar["profile"] == PROFILE and post.sidecar["precision"] == "fp32"
    assert profile_in_plan(net.plan, bounds), "the batch profile (1, 4, 4) is not in the plan"
    assert not profile_in_plan(net.plan, {**bounds, "opt": [8, *SIZE, 3], "max": [8, *SIZE, 3]})
    assert not profile_in_plan(ensure_engine(fused, "fp32", RTX, build).plan, bounds), "the fused plan has no batch"
    print(f"\nbatched plans of random:tiny built in {built:.1f} s")


def test_max_batch_gets_its_own_plan_and_a_second_load_is_a_hit(graphs):
    build, fused, network = graphs
    four = ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, build)
    eight = ensure_batch_engines(fused, network, SIZE, 8, "fp32", RTX, build)
    assert eight[0].plan != four[0].plan and eight[0].sidecar["key"] != four[0].sidecar["key"]
    assert eight[0].sidecar["profile"][INPUT_IMAGE]["max"][0] == 8
    assert profile_in_plan(eight[0].plan, {"min": [1, *SIZE, 3], "opt": [8, *SIZE, 3], "max": [8, *SIZE, 3]})
    assert eight[1].plan == four[1].plan and eight[1].cache_hit, "the post-processing plan is the same for any batch"
    mtimes = [p.plan.stat().st_mtime_ns for p in four]
    start = time.perf_counter()
    again = ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, build)
    assert time.perf_counter() - start < 1.0
    assert all(e.cache_hit for e in again) and [e.plan for e in again] == [e.plan for e in four]
    assert [p.plan.stat().st_mtime_ns for p in again] == mtimes
    fp16 = ensure_batch_engines(fused, network, SIZE, 4, "fp16", RTX, build)
    assert not fp16[0].cache_hit and fp16[0].sidecar["precision"] == "fp16" and fp16[1].plan == four[1].plan
    assert fp16[0].sidecar["accuracy"]["onnx_vs_fp32"]["agreement"] >= 0.99
    assert ensure_batch_engines(fused, network, SIZE, 4, "fp16", RTX, build)[0].cache_hit
    assert not list((build / "engines").glob("*.tmp")), "temp files left behind"


@pytest.mark.parametrize("which", [0, 1], ids=["network", "post"])
def test_a_corrupt_batched_plan_is_rebuilt(graphs, tmp_path, which):
    build, fused, network = graphs
    copy = tmp_path / "build"
    shutil.copytree(build / "onnx", copy / "onnx", ignore=shutil.ignore_patterns("*.lock"))
    fused, network = copy / "onnx" / fused.name, copy / "onnx" / network.name
    plan = ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, copy)[which].plan
    size = plan.stat().st_size
    corrupt_keeping_size(plan)
    healed = ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, copy)
    assert not healed[which].cache_hit and healed[1 - which].cache_hit and healed[which].plan == plan
    assert plan.stat().st_size == size and healed[which].sidecar["plan"]["sha256"] == engine_cache.file_sha256(plan)
    assert all(e.cache_hit for e in ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX, copy))


def test_triton_export_takes_the_fused_plan_not_a_batched_one(graphs, tmp_path):
    """Every plan's sidecar names the fused graph it derives from; only the fused plan serves Triton's model."""
    from segdemo.triton.repository import find_plan

    build, fused, network = graphs
    plans = [ensure_engine(fused, "fp32", RTX, build), *ensure_batch_engines(fused, network, SIZE, 4, "fp32", RTX,
                                                                            build)]
    assert [p.sidecar["graph"] for p in plans] == ["fused", "batched network", "post-processing"]
    engines = tmp_path / "engines"
    engines.mkdir()
    for age, plan in enumerate(plans):  # as full TensorRT would write them, the batched ones newest
        meta = {**plan.sidecar, "backend": "tensorrt", "built_at": f"2026-01-0{age + 1}"}
        (engines / plan.plan.name).write_bytes(b"plan")
        engine_cache.write_sidecar(engines / plan.plan.name, meta)
    assert find_plan(fused, "fp32", tmp_path)[0].name == plans[0].plan.name


def test_loader_discards_a_plan_tensorrt_will_not_deserialise(graphs, source, monkeypatch):
    """The loader's side of the batched plans, up to deserialisation. No GPU here, so TensorRT-RTX cannot deserialise;
    a stand-in deserialiser refuses the network plan once (as TensorRT refuses a plan of another version) and accepts
    everything else. The runner needs a GPU: tests/test_tensorrt_gpu.py."""
    build, fused, _ = graphs
    refused = []

    def deserialize(runtime, plan, backend, spans):
        if "-batched-" in plan.name and not refused:
            refused.append(plan)
            return None
        return f"engine of {plan.name}"

    monkeypatch.setattr(loader_module, "deserialize", deserialize)
    spans = SpanRecorder()
    loaded = EngineLoader(fused, RTX, build, source=source, max_batch=4).deserialize("fp32", spans)
    assert refused and loaded.engine == f"engine of {refused[0].name}" and refused[0].is_file(), "not rebuilt"
    assert loaded.max_batch == 4 and loaded.precision == "fp32" and loaded.max_out == (2048, 2048)
    assert loaded.post.engine.startswith("engine of ") and "-post-" in loaded.post.artifact.plan.name
    assert loaded.artifact.sidecar["profile"][INPUT_IMAGE]["max"][0] == 4
    caches = [s for s in spans.spans if s.name == "engine cache"]
    assert len(caches) == 2 and not caches[1].attrs["cache_hit"] and len(caches[1].attrs["plans"]) == 2


def test_batching_needs_the_model_and_a_gpu(graphs, source):
    _, fused, _ = graphs
    with pytest.raises(ValueError, match="pass a LoadContext with source="):
        backends.create(RTX, fused, SpanRecorder(), max_batch=4)
    from segdemo.gpu import detect

    if detect() is not None:
        pytest.skip("this machine has a GPU; creating the backend would succeed")
    with pytest.raises(SegdemoError, match="cannot run here: .*no CUDA GPU"):
        backends.create(RTX, fused, SpanRecorder(), LoadContext(source, fused.parent.parent), max_batch=4)
