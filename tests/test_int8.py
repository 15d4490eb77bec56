"""int8 on the CPU: the quantized network graph is made once, cached and made again when damaged; its accuracy guard
is measured once, recorded with it, and sends a session back to fp32 (loudly) below its bar; auto picks int8."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from segdemo import backends
from segdemo.engine_cache import sidecar_path
from segdemo.errors import SegdemoError
from segdemo.graph import int8
from segdemo.graph.batched import ensure_network_onnx
from segdemo.graph.export import ensure_onnx
from segdemo.model.source import resolve
from segdemo.pipeline import Session
from segdemo.profiling.spans import SpanRecorder

from .conftest import photo


@pytest.fixture(scope="module")
def tiny(build_dir):
    """random:tiny's source and its network graph (the fused graph's network part), made once."""
    source = resolve("random:tiny", build_dir)
    return source, ensure_network_onnx(ensure_onnx(source, build_dir)[0])


def test_the_int8_graph_is_made_once_and_its_guard_recorded_with_it(tiny, monkeypatch):
    _, network = tiny
    made = int8.ensure_int8_network(network)
    record = json.loads(sidecar_path(made.path).read_text())
    assert record["agreement"].keys() == set(int8.PROBE_PHOTOS) and record["min_agreement"] == int8.MIN_AGREEMENT
    assert record["int8"] == (min(record["agreement"].values()) >= int8.MIN_AGREEMENT)
    assert record["graph"]["bytes"] == made.path.stat().st_size < network.stat().st_size  # int8 weights are smaller
    ops = {node.op_type for node in _nodes(made.path)}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops and "Conv" in ops and "MatMul" in ops  # attention's stays

    def measured_again(*args):
        raise AssertionError("the guard's measurement is read back, never made again on a later start")

    monkeypatch.setattr(int8, "photo_agreement", measured_again)
    monkeypatch.setattr(int8, "quantize", measured_again)
    again = int8.ensure_int8_network(network)
    assert again.cache_hit and again.path == made.path and again.record == made.record


@pytest.fixture(scope="module")
def own_tiny(tmp_path_factory):
    """random:tiny's network graph in a build folder of its own, for the tests that damage what is in it."""
    folder = tmp_path_factory.mktemp("int8-build")
    return ensure_network_onnx(ensure_onnx(resolve("random:tiny", folder), folder)[0])


@pytest.mark.parametrize("damage", ["truncated graph", "same-size garbage", "unreadable sidecar"])
def test_a_damaged_int8_graph_is_made_again(own_tiny, damage, caplog):
    network = own_tiny
    first = int8.ensure_int8_network(network)
    original = first.path.read_bytes()
    if damage == "truncated graph":
        first.path.write_bytes(original[: len(original) // 2])
    elif damage == "same-size garbage":
        first.path.write_bytes(b"\x08" * len(original))  # only the checksum finds this
    else:
        sidecar_path(first.path).write_text("{not json")
    caplog.set_level(logging.WARNING, logger="segdemo")
    again = int8.ensure_int8_network(network)
    assert not again.cache_hit, "a damaged int8 graph must be made again, never used"
    assert again.path.read_bytes() == original  # quantization is deterministic: the same graph again
    assert any("damaged or stale" in r.getMessage() for r in caplog.records)
    assert int8.ensure_int8_network(network).cache_hit


def test_the_guard_falls_back_to_fp32_loudly_below_its_bar(tiny, build_dir, caplog):
    source, _ = tiny
    onnx_file, _ = ensure_onnx(source, build_dir)
    context = backends.LoadContext(source, build_dir)
    caplog.set_level(logging.INFO, logger="segdemo")
    # A bar above 100 % no class map can reach: the guard must refuse int8 whatever the measurement.
    with backends.create("onnxruntime", onnx_file, SpanRecorder(), context, precision="int8",
                         min_agreement=1.0001) as refused:
        # the fused graph's fp32 network part, as with --precision fp32
        assert refused.precision == "fp32" and refused.network == ensure_network_onnx(onnx_file)
        assert "below the bar, so fp32 runs" in refused.facts()["Accuracy guard"]
        with backends.create("onnxruntime", onnx_file, SpanRecorder(), context) as fp32:
            image = _input(source.input_size)
            assert np.array_equal(refused.run(image, SpanRecorder()), fp32.run(image, SpanRecorder()))
    loud = [r for r in caplog.records if "falling back to fp32" in r.getMessage()]
    assert loud and loud[0].levelno >= logging.WARNING and "100.01 %" in loud[0].getMessage()
    with backends.create("onnxruntime", onnx_file, SpanRecorder(), context, precision="int8") as kept:
        assert kept.precision == "int8" and "int8 runs" in kept.facts()["Accuracy guard"]


def test_auto_picks_int8_on_the_cpu_where_the_guard_passes(build_dir, tiny):
    assert backends.precision_for("onnxruntime") == "int8"
    assert backends.precision_for("onnxruntime", "fp32") == "fp32"
    assert backends.precision_for("tensorrt") == "fp16"
    with pytest.raises(SegdemoError, match="int8 runs on the CPU backend"):
        backends.precision_for("torch-cuda", "int8")
    _, network = tiny
    assert int8.ensure_int8_network(network).passes(), "random:tiny's int8 graph should pass its guard"
    with Session("random:tiny", "onnxruntime", build_dir=build_dir, warm_up="off") as auto, \
            Session("random:tiny", "onnxruntime", "fp32", build_dir=build_dir, warm_up="off") as fp32:
        assert auto.describe()["precision"] == "int8" and fp32.describe()["precision"] == "fp32"
        assert "Accuracy guard" not in fp32.backend.facts()  # an explicit fp32 runs fp32, unguarded
        image = photo("chelsea", (333, 500))  # neither a probe photo's size nor the network's input
        ours, theirs = auto.segment(image).class_map, fp32.segment(image).class_map
        assert ours.shape == theirs.shape == (333, 500)
        assert float((ours == theirs).mean()) >= int8.MIN_AGREEMENT


def _nodes(path):
    import onnx

    return onnx.load(str(path)).graph.node


def _input(input_size):
    from segdemo.image.preprocess import prepare

    return prepare(photo("rocket", (240, 320)), input_size)
