"""The fused graph split for batching: a network graph with a batch dimension (uint8 NHWC pixels → logits) and a
per-image post-processing graph (logits → upsampled → argmax → uint8 class map of that image's size); and the fused
graph's own network part (`ensure_network_onnx`, batch 1) for runtimes that post-process on the host.

Requests in one batch share the network but not their output size, so the post-processing cannot stay in the
batched graph: one Resize has one target size. Both graphs use the fused graph's own pre/post nodes (export.py),
so a batch of one gives the fused graph's pixels.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import atomic_write, digest, lock_for, resolve_build_dir
from ..errors import SegdemoError
from .export import (
    INPUT_IMAGE,
    INPUT_SIZE,
    OPSET,
    OUTPUT_CLASSES,
    export_fingerprint,
    postprocess_nodes,
    preprocess_nodes,
)

if TYPE_CHECKING:
    import onnx

    from ..model.source import ModelSource

log = logging.getLogger(__name__)

LOGITS = "logits"


def batched_paths(source: ModelSource, build_dir: Path | None = None) -> tuple[Path, Path]:
    """Where the batched network graph and the per-image post-processing graph of this model live."""
    key = digest(source.content_hash, export_fingerprint(), Path(__file__).read_bytes(), str(source.input_size))[:16]
    folder = resolve_build_dir(build_dir) / "onnx"
    return folder / f"{source.name}-batched-{key}.onnx", folder / f"{source.name}-post-{key}.onnx"


def ensure_batched_onnx(source: ModelSource, build_dir: Path | None = None) -> tuple[Path, Path]:
    """(network graph, post graph), exported once (the network needs torch and transformers; the post graph not)."""
    if source.graph is not None:
        raise SegdemoError(f"'{source.spec}' is a prepared folder: it brings the fused graph, not the batched ones "
                           f"(exported from the weights) — run it with --max-batch 1, or pass --model "
                           f"{source.prepared_from} where torch and transformers are installed")
    network, post = batched_paths(source, build_dir)
    if network.is_file() and post.is_file():
        return network, post
    with lock_for(network):
        if not (network.is_file() and post.is_file()):
            start = time.perf_counter()
            atomic_write(post, post_graph(len(source.labels)).SerializeToString())
            atomic_write(network, network_graph(source).SerializeToString())
            log.info("exported the batched network graph %s in %.1f s", network, time.perf_counter() - start)
    return network, post


def network_path(fused: Path) -> Path:
    """Where the network part of the fused graph at `fused` lives (beside it; its name carries the fused graph's)."""
    return fused.with_name(f"{fused.stem}-network-{digest(Path(__file__).read_bytes())[:8]}.onnx")


def ensure_network_onnx(fused: Path) -> Path:
    """The fused graph without its post-processing (uint8 [1, H, W, 3] → fp32 logits [1, h, w, C]), cut once from
    the fused graph: the same nodes, so the same logits, and no second export from the model (no torch)."""
    path = network_path(fused)
    if path.is_file():
        return path
    with lock_for(path):
        if not path.is_file():
            atomic_write(path, network_part(fused).SerializeToString())
    return path


def network_part(fused: Path) -> onnx.ModelProto:
    """The fused graph's nodes up to its channels-last logits (export.postprocess_nodes' first node's output, the
    graph's one output)."""
    import onnx

    model = onnx.load(str(fused))
    graph = model.graph
    (classes,) = [init for init in graph.initializer if init.name == "post_classes"]
    num_labels = int(onnx.numpy_helper.to_array(classes)[0])
    nodes = list(graph.node)
    (cut,) = [k for k, node in enumerate(nodes) if node.name == "post_nhwc"]
    graph.ClearField("node")
    graph.node.extend(nodes[:cut + 1])
    used = {name for node in graph.node for name in node.input}
    kept_inits = [init for init in graph.initializer if init.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept_inits)
    inputs = [i for i in graph.input if i.name == INPUT_IMAGE]
    graph.ClearField("input")
    graph.input.extend(inputs)
    graph.ClearField("output")
    graph.output.extend([onnx.helper.make_tensor_value_info(nodes[cut].output[0], onnx.TensorProto.FLOAT,
                                                            [1, "h", "w", num_labels])])
    onnx.checker.check_model(model)
    return model


def network_graph(source: ModelSource) -> onnx.ModelProto:
    """uint8 [N, H, W, 3] → fp32 logits channels-last [N, H/4, W/4, C], N dynamic.

    Channels-last as the fused graph's post-processing wants them: ONNX Runtime then folds the transpose into the
    classifier, as it does in the fused graph, instead of a separate pass over the logits in the post graph."""
    import onnx
    import torch

    from ..model.network import folded_logits

    net = folded_logits(source.load_model())
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch annotates f as a path; the TorchScript exporter (dynamo=False) also writes to a file object
        torch.onnx.export(net, (torch.zeros(2, 3, *source.input_size),), buffer,  # type: ignore[arg-type]
                          input_names=["pixel_values"],
                          output_names=["logits_nchw"], opset_version=OPSET, do_constant_folding=True, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits_nchw": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    graph = model.graph
    (net_input,) = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    nodes, inits = preprocess_nodes(net_input.name)
    (net_output,) = graph.output
    merged = nodes + list(graph.node) + [
        onnx.helper.make_node("Transpose", [net_output.name], [LOGITS], perm=[0, 2, 3, 1], name="logits_nhwc")]
    graph.ClearField("node")
    graph.node.extend(merged)
    graph.initializer.extend(inits)
    graph.ClearField("input")
    graph.input.extend([onnx.helper.make_tensor_value_info(INPUT_IMAGE, onnx.TensorProto.UINT8,
                                                           ["batch", *source.input_size, 3])])
    graph.ClearField("output")
    graph.output.extend([onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT,
                                                            ["batch", "h", "w", len(source.labels)])])
    graph.ClearField("value_info")
    onnx.checker.check_model(model)
    return model


def post_graph(num_labels: int) -> onnx.ModelProto:
    """fp32 logits channels-last [1, h, w, C] + out_size → uint8 class map [1, out_height, out_width] (the fused
    graph's nodes after its transpose)."""
    import onnx

    nodes, inits = postprocess_nodes(LOGITS, num_labels)
    transposed = nodes[0].output[0]  # the fused graph transposes its logits first; these come channels-last
    nodes = nodes[1:]
    for node in nodes:
        node.input[:] = [LOGITS if name == transposed else name for name in node.input]
    graph = onnx.helper.make_graph(
        nodes, "segdemo-post",
        [onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, [1, "h", "w", num_labels]),
         onnx.helper.make_tensor_value_info(INPUT_SIZE, onnx.TensorProto.INT64, [2])],
        [onnx.helper.make_tensor_value_info(OUTPUT_CLASSES, onnx.TensorProto.UINT8, [1, "out_height", "out_width"])],
        initializer=inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every ONNX Runtime we support
    onnx.checker.check_model(model)
    return model
