"""Real TensorRT-RTX ahead-of-time builds (no GPU needed): plan, sidecar, cache hits, invalidation, self-healing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from segdemo import engine_cache
from segdemo.artifacts import lock_for
from segdemo.backends.tensorrt.engine_build import PROFILE, engine_spec, ensure_engine
from segdemo.graph.export import INPUT_IMAGE, INPUT_SIZE, ensure_onnx
from segdemo.graph.fp16 import channels_first_upsampling, ensure_tensorrt_onnx, graph_check, run_onnx
from segdemo.model.source import resolve

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is in requirements.txt; install it to run these")

RTX = "tensorrt-rtx"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def tiny_onnx(build) -> Path:
    path, _ = ensure_onnx(resolve("random:tiny"), build)
    return path


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def test_fp32_plan_sidecar_and_cache_hit(tiny_onnx, build):
    first = ensure_engine(tiny_onnx, "fp32", RTX, build)
    assert not first.cache_hit and first.plan.is_file() and first.plan.parent == build / "engines"
    meta = json.loads(engine_cache.sidecar_path(first.plan).read_text())
    assert meta == first.sidecar
    assert meta["precision"] == "fp32" and meta["backend"] == RTX and meta["tensorrt"].startswith("tensorrt_rtx ")
    assert meta["target"] == {"aot_targets": ["default"]} and meta["profile"] == PROFILE
    assert PROFILE["out_size"]["max"] == [2048, 2048]
    assert meta["plan"]["bytes"] == first.plan.stat().st_size > 1_000_000
    assert meta["plan"]["sha256"] == engine_cache.file_sha256(first.plan)
    assert meta["onnx"]["sha256"] == engine_cache.file_sha256(first.graph) == meta["key_parts"]["onnx_sha256"]
    assert meta["key"] == engine_cache.engine_key(meta["key_parts"])
    assert meta["build_seconds"] > 0 and meta["accuracy"]["engine_agreement"] is None  # no GPU ran it
    mtime = first.plan.stat().st_mtime_ns

    start = time.perf_counter()
    second = ensure_engine(tiny_onnx, "fp32", RTX, build)
    hit_seconds = time.perf_counter() - start
    assert second.cache_hit and second.plan == first.plan and second.plan.stat().st_mtime_ns == mtime
    assert hit_seconds < meta["build_seconds"] + 0.5 and hit_seconds < 1.0
    assert not _files(build / "engines", "*.tmp"), "temp files left behind"


def test_fp16_graph_keeps_sensitive_ops_fp32_and_agrees(tiny_onnx):
    path, _ = ensure_tensorrt_onnx(tiny_onnx, "fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                             *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert sum(t.data_type == fp16 for t in model.graph.initializer) > 20, "the network's weights are not fp16"
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == fp32 and types[node.output[0]] == fp32, node.name
        if node.op_type in ("MatMul", "Conv") and not node.name.startswith(("pre_", "post_")):
            assert types[node.output[0]] == fp16, node.name
    resize = next(n for n in model.graph.node if n.name == "post_resize")
    assert types[resize.input[0]] == fp32, "the final upsampling must run in fp32"
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {INPUT_IMAGE: onnx.TensorProto.UINT8, INPUT_SIZE: onnx.TensorProto.INT64}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    check = graph_check(path)
    print(f"\nfp16 vs fp32 on ONNX Runtime (random:tiny, probe): {check['agreement'] * 100:.3f} %")
    assert check["agreement"] >= 0.99


def test_tensorrt_layout_gives_identical_class_maps(tiny_onnx):
    """The channels-first upsampling TensorRT builds from is value-identical to the fused graph on ONNX Runtime."""
    model = onnx.load(str(tiny_onnx))
    rewrites = channels_first_upsampling(model)
    assert channels_first_upsampling(model) == 0, "the rewrite must be idempotent"
    if rewrites == 0:
        pytest.skip("the fused graph upsamples channels-first already; nothing to compare")
    rewritten = model.SerializeToString()
    pixels = np.random.default_rng(1).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    for size in ((7, 5), (300, 1000), (1024, 768)):
        expected = run_onnx(tiny_onnx, pixels, size)
        assert (run_onnx(rewritten, pixels, size) == expected).all(), size


def test_fp16_plan_and_hit(tiny_onnx, build):
    first = ensure_engine(tiny_onnx, "fp16", RTX, build)
    assert not first.cache_hit and "-fp16-" in first.plan.name
    meta = first.sidecar
    assert meta["precision"] == "fp16" and meta["onnx"]["file"] == first.graph.name != tiny_onnx.name
    assert meta["accuracy"]["onnx_vs_fp32"]["agreement"] >= 0.99
    assert ensure_engine(tiny_onnx, "fp16", RTX, build).cache_hit
    assert first.plan != ensure_engine(tiny_onnx, "fp32", RTX, build).plan


def test_changed_onnx_or_target_invalidates(tiny_onnx, build, tmp_path):
    base = ensure_engine(tiny_onnx, "fp32", RTX, build)
    # Same model, different graph bytes (a changed doc string) → a different key and a new build.
    other_dir = tmp_path / "onnx"
    other_dir.mkdir()
    other = other_dir / tiny_onnx.name.replace("fp32-", "fp32-0")
    model = onnx.load(str(tiny_onnx))
    model.doc_string += " (edited)"
    onnx.save(model, str(other))
    changed = ensure_engine(other, "fp32", RTX, build)
    assert not changed.cache_hit and changed.sidecar["key"] != base.sidecar["key"]
    # Another AOT target list → another key.
    targeted = ensure_engine(tiny_onnx, "fp32", RTX, build, targets=["sm86"])
    assert not targeted.cache_hit and targeted.sidecar["target"] == {"aot_targets": ["SM86"]}
    assert targeted.plan != base.plan
    assert ensure_engine(tiny_onnx, "fp32", RTX, build, targets=["SM86"]).cache_hit
    assert ensure_engine(tiny_onnx, "fp32", RTX, build).cache_hit  # the original is still valid


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar"])
def test_damaged_plan_is_rebuilt(tiny_onnx, tmp_path, damage):
    build = tmp_path / "build"
    shutil.copytree(tiny_onnx.parent, build / "onnx")
    onnx_file = build / "onnx" / tiny_onnx.name
    plan = ensure_engine(onnx_file, "fp32", RTX, build).plan
    size = plan.stat().st_size
    if damage == "truncate":
        with plan.open("r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "flip":
        data = bytearray(plan.read_bytes())
        data[size // 2] ^= 0xFF
        plan.write_bytes(bytes(data))
    else:
        engine_cache.sidecar_path(plan).write_text("{not json")
    healed = ensure_engine(onnx_file, "fp32", RTX, build)
    assert not healed.cache_hit and healed.plan == plan
    assert plan.stat().st_size == size and healed.sidecar["plan"]["sha256"] == engine_cache.file_sha256(plan)
    assert ensure_engine(onnx_file, "fp32", RTX, build).cache_hit


BUILDER = """
import json, sys
from pathlib import Path
from segdemo.backends.tensorrt.engine_build import ensure_engine
engine = ensure_engine(Path(sys.argv[1]), "fp32", "tensorrt-rtx", Path(sys.argv[2]))
print(json.dumps({"hit": engine.cache_hit, "plan": str(engine.plan)}))
"""


def test_concurrent_builders_wait_on_the_lock_and_build_once(tiny_onnx, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_onnx.parent, build / "onnx")
    onnx_file = build / "onnx" / tiny_onnx.name
    plan = engine_spec(onnx_file, "fp32", RTX, build).plan
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with lock_for(plan):  # hold the lock so both builders are certainly waiting on it at the same time
        procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(onnx_file), str(build)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(6)
        assert all(p.poll() is None for p in procs), "a builder did not wait for the lock"
        assert not plan.exists()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in results) == [False, True], results
    assert {r["plan"] for r in results} == {str(plan)}
    assert _files(plan.parent, "*.plan") == [plan] and not _files(plan.parent, "*.tmp")
    assert engine_cache.lookup(plan, engine_spec(onnx_file, "fp32", RTX, build).key)[0] is not None


def test_cli_build_then_cache_hit(tiny_onnx, build):
    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "segdemo", "build", "--model", "random:tiny", "--precision",
                               "fp32", "--backend", RTX, "--build-dir", str(build)],
                              capture_output=True, text=True, timeout=300)

    run()  # may or may not build, depending on test order
    result = run()
    assert result.returncode == 0, result.stderr
    assert "cache    hit" in result.stdout and ".plan" in result.stdout and "Traceback" not in result.stderr


def test_unknown_target_is_one_line(tiny_onnx, build):
    result = subprocess.run([sys.executable, "-m", "segdemo", "build", "--model", "random:tiny", "--backend", RTX,
                             "--target", "sm90", "--build-dir", str(build)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown TensorRT-RTX target sm90" in result.stderr


def test_doctor_is_truthful_without_a_gpu(build):
    from segdemo.gpu import detect

    result = subprocess.run([sys.executable, "-m", "segdemo", "doctor", "--build-dir", str(build)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "backend ladder" in out and "tensorrt_rtx" in out
    if detect() is None:
        assert "tensorrt-rtx  skipped  no CUDA GPU" in out
        assert "→ onnxruntime" in out and "onnxruntime   ok: 100.00 %" in out
        assert "AOT build ok" in out


def test_explicit_tensorrt_backend_without_gpu_says_why():
    from segdemo import backends
    from segdemo.errors import SegdemoError
    from segdemo.gpu import detect

    if detect() is not None:
        pytest.skip("this machine has a GPU; the reason would differ")
    with pytest.raises(SegdemoError, match="tensorrt-rtx.*no CUDA GPU.*--backend auto"):
        backends.choose("tensorrt-rtx")
    rungs = {r.name: r for r in backends.ladder()}
    assert list(rungs)[:2] == ["tensorrt", "tensorrt-rtx"] and list(rungs)[-1] == "onnxruntime"
    assert not rungs["tensorrt-rtx"].available


def test_tensorrt_backends_take_explicit_options(tiny_onnx):
    """Loading settings come in the LoadContext; anything but the backend's own keywords is refused by name."""
    from segdemo import backends
    from segdemo.errors import SegdemoError
    from segdemo.profiling.spans import SpanRecorder

    for name in ("tensorrt", RTX):
        with pytest.raises(SegdemoError, match="has no option build_dir — it takes precision, targets, min_agreement"):
            backends.create(name, tiny_onnx, SpanRecorder(), build_dir=tiny_onnx.parent)


def test_missing_tensorrt_names_what_to_install():
    import importlib.util

    from segdemo.backends.tensorrt.flavour import flavour
    from segdemo.backends.tensorrt.runner import unavailable_reason
    from segdemo.optional import MissingPackageError

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("full TensorRT is installed here")
    with pytest.raises(MissingPackageError, match="tensorrt is not installed.*pip install tensorrt-cu13"):
        flavour("tensorrt").load()
    assert "pip install tensorrt-cu13" in unavailable_reason("tensorrt")


def test_without_onnxruntime_the_graph_made_beside_it_is_used(tiny_onnx, monkeypatch):
    """A prepared folder on a TensorRT-only install: the TensorRT graph made where ONNX Runtime was is found by its
    sidecar (its key names ONNX Runtime's version), and the accuracy guard's reference is the one kept beside it."""
    from segdemo.graph import fp16
    from segdemo.optional import MissingPackageError

    made, _ = ensure_tensorrt_onnx(tiny_onnx, "fp32")
    reference = fp16.probe_reference(tiny_onnx)
    assert tiny_onnx.with_suffix(fp16.PROBE_SUFFIX).is_file()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    fp16._probe_reference.cache_clear()
    assert ensure_tensorrt_onnx(tiny_onnx, "fp32") == (made, True)
    assert np.array_equal(fp16.probe_reference(tiny_onnx), reference)
    with pytest.raises(MissingPackageError, match="onnxruntime is not installed .*fp16 graph"):
        ensure_tensorrt_onnx(tiny_onnx.with_name("other-fp32-0123456789abcdef.onnx"), "fp16")
