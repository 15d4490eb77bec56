"""Export SegFormer once into one fused ONNX graph: uint8 RGB in, uint8 class map out."""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..artifacts import atomic_write, digest, lock_for, package_version, resolve_build_dir
from ..errors import SegdemoError
from ..optional import require

if TYPE_CHECKING:
    import onnx

    from ..model.source import ModelSource
    from ..profiling.spans import SpanRecorder

log = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is a single op from opset 17, which TensorRT maps to a fused layer
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES = "image", "out_size", "classes"


def export_fingerprint() -> str:
    """Changes whenever this module or the exporting libraries change, invalidating cached graphs (versions from
    package metadata, so finding a cached graph imports none of them)."""
    return digest(Path(__file__).read_bytes(), *(package_version(name) for name in ("torch", "onnx", "transformers")))


def onnx_path(source: ModelSource, build_dir: Path | None = None, precision: str = "fp32") -> Path:
    """Where the fused graph of this model and precision lives (name + precision + content hash)."""
    key = digest(source.content_hash, export_fingerprint(), precision, str(source.input_size))[:16]
    return resolve_build_dir(build_dir) / "onnx" / f"{source.name}-{precision}-{key}.onnx"


def ensure_onnx(source: ModelSource, build_dir: Path | None = None,
                spans: SpanRecorder | None = None) -> tuple[Path, bool]:
    """Return (path, cache_hit) of the fp32 fused graph, exported only when absent (a prepared folder brings it)."""
    if source.graph is not None:
        return source.graph, True
    path = onnx_path(source, build_dir)
    if path.is_file():
        return path, True
    with lock_for(path):
        if path.is_file():  # another process exported it while we waited
            return path, True
        for module in ("torch", "transformers"):  # said before anything is loaded, in one sentence
            require(module, purpose=f"exporting the fused graph of {source.spec}; a folder prepared where it is "
                                    f"installed (`segdemo build --build-dir DIR`) runs as --model DIR without it")
        start = time.perf_counter()
        model = fused_graph(source, spans)
        with _span(spans, "write onnx", file=path.name):
            atomic_write(path, model.SerializeToString())
        log.info("exported %s in %.1f s (%.1f MB)", path, time.perf_counter() - start, path.stat().st_size / 1e6)
    return path, False


def _span(spans: SpanRecorder | None, name: str, **attrs):
    from contextlib import nullcontext

    from ..profiling.spans import LOAD

    return spans.span(name, LOAD, **attrs) if spans is not None else nullcontext(attrs)


def fused_graph(source: ModelSource, spans: SpanRecorder | None = None) -> onnx.ModelProto:
    """Network from transformers wrapped in pre/post-processing nodes, all in one graph."""
    import onnx

    num_labels = len(source.labels)
    if num_labels > 256:
        raise SegdemoError(f"the model has {num_labels} classes; the uint8 class map holds at most 256")
    with _span(spans, "load weights", random=source.random_weights):
        net = source.load_model()
    with _span(spans, "torch.onnx export", opset=OPSET):
        model = _export_network(net, source.input_size)
    graph = model.graph
    (net_input,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    (net_output,) = graph.output
    height, width = source.input_size
    pre = preprocess_nodes(net_input.name)
    post = postprocess_nodes(net_output.name, num_labels)
    nodes = pre[0] + list(graph.node) + post[0]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(pre[1] + post[1])
    graph.ClearField("input")
    graph.input.extend([
        onnx.helper.make_tensor_value_info(INPUT_IMAGE, onnx.TensorProto.UINT8, [1, height, width, 3]),
        onnx.helper.make_tensor_value_info(INPUT_SIZE, onnx.TensorProto.INT64, [2]),
    ])
    graph.ClearField("output")
    graph.output.extend([
        onnx.helper.make_tensor_value_info(OUTPUT_CLASSES, onnx.TensorProto.UINT8, [1, "out_height", "out_width"]),
    ])
    graph.ClearField("value_info")
    model.doc_string = f"segdemo fused SegFormer graph of {source.spec}" + (
        " (RANDOM WEIGHTS)" if source.random_weights else ""
    )
    onnx.checker.check_model(model)
    return model


def _export_network(network, input_size: tuple[int, int]) -> onnx.ModelProto:
    import onnx
    import torch

    from ..model.network import folded_logits

    net = folded_logits(network)  # the same logits with the decode head folded (see network.py)
    dummy = torch.zeros(1, 3, *input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python bools in attention code
        # The TorchScript exporter keeps the graph static and small (no dynamo shape guards).
        # torch annotates f as a path; the TorchScript exporter (dynamo=False) also writes to a file object
        torch.onnx.export(
            net, (dummy,), buffer, input_names=["pixel_values"], output_names=["logits"],  # type: ignore[arg-type]
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def normalisation() -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), float32 per RGB channel, with x·scale + shift == (x/255 − mean)/std."""
    std = np.array(IMAGENET_STD, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.array(IMAGENET_MEAN) / std).astype(np.float32)


def preprocess_nodes(pixel_values: str) -> tuple[list, list]:
    """uint8 NHWC → float NCHW, normalised as (x/255 − mean)/std, folded into one Mul and one Add."""
    from onnx import helper, numpy_helper

    scale, shift = normalisation()
    nodes = [
        helper.make_node("Cast", [INPUT_IMAGE], ["pre_float"], to=1, name="pre_cast"),
        helper.make_node("Mul", ["pre_float", "pre_scale"], ["pre_scaled"], name="pre_scale"),
        helper.make_node("Add", ["pre_scaled", "pre_shift"], ["pre_normed"], name="pre_shift"),
        helper.make_node("Transpose", ["pre_normed"], [pixel_values], perm=[0, 3, 1, 2], name="pre_nchw"),
    ]
    inits = [numpy_helper.from_array(scale, "pre_scale"), numpy_helper.from_array(shift, "pre_shift")]
    return nodes, inits


def postprocess_nodes(logits: str, num_labels: int) -> tuple[list, list]:
    """Bilinear upsampling of the logits to `out_size` (as torch's align_corners=False), then argmax.

    Channels-last: the same values, but ArgMax reduces over contiguous memory, several times faster on ONNX Runtime
    (docs/benchmarks.md). Resize then scales the innermost three dims (H, W, and C at scale 1).
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Transpose", [logits], ["post_nhwc"], perm=[0, 2, 3, 1], name="post_nhwc"),
        helper.make_node("Concat", ["post_batch", INPUT_SIZE, "post_classes"], ["post_sizes"], axis=0,
                         name="post_sizes"),
        helper.make_node(
            "Resize", ["post_nhwc", "", "", "post_sizes"], ["post_upsampled"], mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel", name="post_resize",
        ),
        helper.make_node("ArgMax", ["post_upsampled"], ["post_argmax"], axis=3, keepdims=0, name="post_argmax"),
        # int64 → int32 → uint8: TensorRT casts to uint8 only from 32-bit types.
        helper.make_node("Cast", ["post_argmax"], ["post_int32"], to=TensorProto.INT32, name="post_int32"),
        helper.make_node("Cast", ["post_int32"], [OUTPUT_CLASSES], to=TensorProto.UINT8, name="post_uint8"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "post_batch"),
        numpy_helper.from_array(np.array([num_labels], dtype=np.int64), "post_classes"),
    ]
    return nodes, inits
