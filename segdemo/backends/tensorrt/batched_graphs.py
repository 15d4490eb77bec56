"""The batched graphs of graph.batched in the form TensorRT builds from, made as graph.fp16 makes the fused one's.

The network graph hands over its logits channels-first (its final Transpose dropped) and, for fp16, is converted by
fp16.convert with the same ops kept fp32. The post-processing graph is the fused graph's own post nodes after
channels-first logits, rewritten by fp16.channels_first_upsampling: the upsampling TensorRT builds in the fused
plan. Those nodes are fp32 in the fused fp16 graph too, so one post graph (and one plan) serves both precisions.
The pair is checked on ONNX Runtime against the fp32 fused graph, as the fused graph's TensorRT form is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ...artifacts import digest
from ...engine_cache import sidecar_path
from ...errors import SegdemoError
from ...graph import fp16
from ...graph.batched import LOGITS
from ...graph.export import INPUT_IMAGE, INPUT_SIZE, OPSET, OUTPUT_CLASSES, postprocess_nodes
from ...graph.fp16 import PROBE_OUT_SIZE, ProgressFn, derived_graph, probe_image, probe_reference

if TYPE_CHECKING:
    import onnx


def tensorrt_batched_paths(network: Path, precision: str) -> tuple[Path, Path]:
    """Where the TensorRT forms of a batched network graph (per precision) and of its post graph (one) live."""
    import onnxruntime

    key = digest(network.name, onnxruntime.__version__, Path(fp16.__file__).read_bytes(),
                 Path(__file__).read_bytes())
    stem = network.stem.rsplit("-", 1)[0]  # the network graph's name is already a content hash of the model
    post_stem = stem.replace("-batched", "-post")
    return (network.parent / f"{stem}-{precision}-tensorrt-{digest(key, precision)[:16]}.onnx",
            network.parent / f"{post_stem}-tensorrt-{key[:16]}.onnx")


def ensure_tensorrt_batched_onnx(network: Path, fp32_file: Path, precision: str = "fp16",
                                 progress: ProgressFn | None = None) -> tuple[Path, Path]:
    """(network graph, post graph) to build batched `precision` plans from, made and checked once.

    `network` is graph.batched's network graph; `fp32_file` the fused graph the pair must agree with.
    """
    network_path, post_path = tensorrt_batched_paths(network, precision)

    def make() -> tuple[bytes, dict]:
        import onnx

        model = onnx.load(str(network))
        size = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:3]
        logits = channels_first_logits(model)
        if precision == "fp16":
            model = fp16.convert(model)
        data = model.SerializeToString()
        post = ensure_post_graph(post_path, logits)
        if progress is not None:
            progress(0.5, f"checking the batched {precision} graphs against fp32 on ONNX Runtime")
        return data, {"source": network.name, "precision": precision, "post_graph": post.name, "logits": logits,
                      "onnxruntime_check": batched_agreement(fp32_file, data, post, (size[0], size[1]))}

    network_path, _ = derived_graph(network_path, precision, make, progress)
    logits = json.loads(sidecar_path(network_path).read_text())["logits"]
    return network_path, ensure_post_graph(post_path, logits)  # made again from the record if it went missing


def channels_first_logits(model: onnx.ModelProto) -> list[int]:
    """Drop the network graph's final NCHW → NHWC Transpose, so it outputs [batch, C, h, w]; returns [C, h, w]."""
    import onnx

    graph = model.graph
    (final,) = [n for n in graph.node if LOGITS in n.output]
    perm = next((list(a.ints) for a in final.attribute if a.name == "perm"), [])
    if final.op_type != "Transpose" or perm != [0, 2, 3, 1]:
        raise SegdemoError(f"the batched network graph does not end in the expected Transpose ({final.op_type}) — "
                           f"delete build/onnx/*-batched-* and load again to re-export it")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # the logits' size is static: input / 4
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    if None in dims[1:]:
        raise SegdemoError(f"could not work out the size of the batched graph's logits ({dims}) — report this")
    height, width, classes = cast("list[int]", dims[1:])  # none is None past the check above
    nchw = final.input[0]
    graph.node.remove(final)
    for node in graph.node:
        node.output[:] = [LOGITS if name == nchw else name for name in node.output]
        node.input[:] = [LOGITS if name == nchw else name for name in node.input]
    graph.ClearField("output")
    graph.output.extend([onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT,
                                                            ["batch", classes, height, width])])
    return [classes, height, width]


def ensure_post_graph(path: Path, logits: list[int]) -> Path:
    """The per-image post-processing graph for channels-first logits [1, C, h, w], made once."""

    def make() -> tuple[bytes, dict]:
        model = post_graph(logits)
        return model.SerializeToString(), {"precision": "fp32", "logits": logits,
                                           "channels_first_rewrites": 1}

    return derived_graph(path, "fp32", make)[0]


def post_graph(logits: list[int]) -> onnx.ModelProto:
    """fp32 logits [1, C, h, w] + out_size → uint8 class map [1, out_height, out_width], upsampled channels-first."""
    import onnx

    nodes, inits = postprocess_nodes(LOGITS, logits[0])  # starts with the fused graph's Transpose to NHWC
    graph = onnx.helper.make_graph(
        nodes, "segdemo-post-tensorrt",
        [onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, [1, *logits]),
         onnx.helper.make_tensor_value_info(INPUT_SIZE, onnx.TensorProto.INT64, [2])],
        [onnx.helper.make_tensor_value_info(OUTPUT_CLASSES, onnx.TensorProto.UINT8, [1, "out_height", "out_width"])],
        initializer=inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # as graph.batched's post graph
    if fp16.channels_first_upsampling(model) != 1:
        raise SegdemoError("the post-processing nodes no longer upsample channels-last — report this as a bug")
    onnx.checker.check_model(model)
    return model


def run_batched(network: bytes | Path, post: Path, pixels: np.ndarray,
                out_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Class maps of a batch of pixels [N, H, W, 3] through the TensorRT-form graphs on ONNX Runtime's CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(g) if isinstance(g, Path) else g, options,
                                     providers=["CPUExecutionProvider"]) for g in (network, post)]
    (logits,) = sessions[0].run([LOGITS], {INPUT_IMAGE: pixels})
    return [sessions[1].run([OUTPUT_CLASSES], {LOGITS: logits[i:i + 1],
                                               INPUT_SIZE: np.array(size, np.int64)})[0][0]
            for i, size in enumerate(out_sizes)]


def batched_agreement(fp32_file: Path, network: bytes, post: Path, size: tuple[int, int]) -> dict:
    """Pixel agreement of the batched pair with the fp32 fused graph on the probe (`size`: the network's input)."""
    import onnxruntime

    reference = probe_reference(fp32_file)[0]  # the probe at the fused graph's input size, which is this one's
    (ours,) = run_batched(network, post, probe_image(size), [PROBE_OUT_SIZE])
    return {"agreement": round(float((reference == ours).mean()), 6), "probe": f"synthetic {size[0]}×{size[1]}",
            "out_size": list(PROBE_OUT_SIZE), "runtime": f"onnxruntime {onnxruntime.__version__} CPU"}
