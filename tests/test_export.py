"""The fused graph: one file, uint8 in/out, TensorRT-friendly ops, cached by content hash."""

from __future__ import annotations

import numpy as np
import onnx

from segdemo.graph.export import INPUT_IMAGE, INPUT_SIZE, OPSET, OUTPUT_CLASSES, ensure_onnx, onnx_path
from segdemo.model.source import resolve

# Ops the TensorRT ONNX parser supports that this graph may use.
TENSORRT_OPS = {
    "Add", "ArgMax", "Cast", "Concat", "Constant", "Conv", "Div", "Erf", "Gather", "Identity",
    "LayerNormalization", "MatMul", "Mul", "Relu", "Reshape", "Resize", "Shape", "Slice", "Softmax",
    "Sqrt", "Sub", "Transpose", "Unsqueeze", "Squeeze", "Pow", "ReduceMean", "Flatten", "Gemm",
}


def test_graph_interface_and_ops(session_factory):
    model = onnx.load(str(session_factory("random:tiny").onnx_file))
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= OPSET >= 17
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert inputs[INPUT_IMAGE].elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inputs[INPUT_IMAGE].shape.dim] == [1, 512, 512, 3]
    assert inputs[INPUT_SIZE].elem_type == onnx.TensorProto.INT64
    (output,) = model.graph.output
    assert output.name == OUTPUT_CLASSES and output.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops and {"ArgMax", "Resize"} <= ops
    assert ops <= TENSORRT_OPS, f"ops TensorRT may lack: {ops - TENSORRT_OPS}"
    assert "RANDOM WEIGHTS" in model.doc_string


def test_dynamic_output_size(session_factory):
    import onnxruntime as ort

    path = session_factory("random:tiny").onnx_file
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = np.zeros((1, 512, 512, 3), np.uint8)
    for size in ((7, 5), (300, 1000), (1024, 768)):
        (out,) = sess.run(None, {INPUT_IMAGE: pixels, INPUT_SIZE: np.array(size, np.int64)})
        assert out.shape == (1, *size) and out.dtype == np.uint8


def test_cache_hit_does_not_reexport(tmp_path):
    source = resolve("random:tiny")
    path, hit = ensure_onnx(source, tmp_path)
    assert not hit and path.parent == tmp_path / "onnx"
    mtime = path.stat().st_mtime_ns
    again, hit = ensure_onnx(source, tmp_path)
    assert hit and again == path and path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob("*.tmp")), "temp files left behind"
    assert path.name.startswith("random-tiny-fp32-")


def test_name_changes_with_model_and_precision(tmp_path):
    tiny, b0 = resolve("random:tiny"), resolve("random:b0")
    assert onnx_path(tiny, tmp_path) != onnx_path(b0, tmp_path)
    assert onnx_path(tiny, tmp_path, "fp16") != onnx_path(tiny, tmp_path, "fp32")
    assert onnx_path(tiny, tmp_path) == onnx_path(resolve("random:tiny"), tmp_path)
