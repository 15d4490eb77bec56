"""Graphs TensorRT builds from: fp16 network with numerically sensitive ops kept fp32, TensorRT-friendly layout."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write, digest, lock_for
from ..engine_cache import sidecar_path, write_sidecar
from ..errors import SegdemoError
from ..optional import MissingPackageError, missing_text, require
from .export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES

log = logging.getLogger(__name__)

# SegFormer's LayerNorm and attention Softmax overflow in fp16 (wrong masks), so they stay fp32; so does
# everything segdemo wraps around the network (uint8 → float normalisation, upsampling, argmax, uint8 cast).
FP32_OPS = ("LayerNormalization", "Softmax", "ArgMax")
FP32_NODE_PREFIXES = ("pre_", "post_")
MIN_AGREEMENT = 0.99  # below this the fp16 result is not trusted (accuracy guard)

ProgressFn = Callable[[float, str], None]


def tensorrt_graph_path(fp32_file: Path, precision: str) -> Path:
    """Where the graph TensorRT builds from lives (the fp32 graph's name is already a content hash); without ONNX
    Runtime, which makes and checks it, the one made beside `fp32_file` where it is installed (a prepared folder's)."""
    stem = fp32_file.stem.rsplit("-", 1)[0].replace("-fp32", "")
    try:
        import onnxruntime
    except ImportError as exc:
        return made_elsewhere(fp32_file, f"{stem}-{precision}-tensorrt-*.onnx", f"the {precision} graph", exc)
    key = digest(fp32_file.name, precision, onnxruntime.__version__, Path(__file__).read_bytes())[:16]
    return fp32_file.parent / f"{stem}-{precision}-tensorrt-{key}.onnx"


def made_elsewhere(fp32_file: Path, pattern: str, what: str, exc: ImportError) -> Path:
    """The newest complete graph matching `pattern` beside `fp32_file` whose sidecar says it was made from it; else
    the error naming ONNX Runtime, which makes it."""
    made = [path for path in fp32_file.parent.glob(pattern)
            if _cached(path) and _sidecar(path).get("source") == fp32_file.name]
    if not made:
        raise MissingPackageError(missing_text(
            "onnxruntime", None, f"it makes {what} TensorRT builds from; or prepare the folder with `segdemo build` "
                                 f"where it is installed", exc))
    return max(made, key=lambda path: path.stat().st_mtime_ns)


def ensure_tensorrt_onnx(fp32_file: Path, precision: str = "fp16",
                         progress: ProgressFn | None = None) -> tuple[Path, bool]:
    """Return (path, cache_hit) of the graph to build a `precision` engine from, made and checked once.

    fp16 converts the network; both precisions get TensorRT's layout of the upsampling (see channels_first_upsampling).
    """

    def make() -> tuple[bytes, dict]:
        import onnx

        model = onnx.load(str(fp32_file))
        rewrites = channels_first_upsampling(model)
        if precision == "fp16":
            model = convert(model)
        data = model.SerializeToString()
        _report(progress, 0.5, f"checking the {precision} graph against fp32 on ONNX Runtime")
        return data, {"source": fp32_file.name, "precision": precision, "channels_first_rewrites": rewrites,
                      "onnxruntime_check": onnx_agreement(fp32_file, data)}

    return derived_graph(tensorrt_graph_path(fp32_file, precision), precision, make, progress)


def derived_graph(path: Path, precision: str, make: Callable[[], tuple[bytes, dict]],
                  progress: ProgressFn | None = None) -> tuple[Path, bool]:
    """Return (path, cache_hit) of a graph TensorRT builds from, made once under a lock by `make` → (bytes, facts).

    The facts, with the conversion settings, go to a sidecar written before the graph; an `onnxruntime_check` among
    them (agreement with the fp32 fused graph) is logged, loudly below MIN_AGREEMENT.
    """
    if cached := _cached(path):
        return cached, True
    with lock_for(path):
        if cached := _cached(path):  # made by another process meanwhile
            return cached, True
        start = time.perf_counter()
        _report(progress, 0.0, f"preparing the {precision} graph for TensorRT")
        data, meta = make()
        check = meta.get("onnxruntime_check")
        meta.update(
            converter=f"onnxruntime.transformers.float16 {_ort_version()}" if precision == "fp16" else None,
            fp32_ops=list(FP32_OPS), fp32_node_prefixes=list(FP32_NODE_PREFIXES),
            seconds=round(time.perf_counter() - start, 2),
        )
        write_sidecar(path, meta)
        atomic_write(path, data)  # last: the graph's presence means its sidecar is complete
        if check is not None:
            level = logging.WARNING if check["agreement"] < MIN_AGREEMENT else logging.INFO
            log.log(level, "%s graph %s: %.3f %% pixel agreement with fp32 on ONNX Runtime (%.1f s)",
                    precision, path.name, check["agreement"] * 100, meta["seconds"])
        _report(progress, 1.0, f"{precision} graph ready")
    return path, False


def _cached(path: Path) -> Path | None:
    """`path` if the graph was made before: a readable sidecar (written first) and the graph (written last)."""
    try:
        json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return path if path.is_file() else None


def _sidecar(path: Path) -> dict:
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def graph_check(graph: Path) -> dict | None:
    """The ONNX Runtime agreement recorded when the derived graph was made, if any."""
    try:
        return json.loads(sidecar_path(graph).read_text())["onnxruntime_check"]
    except (OSError, ValueError, KeyError):
        return None


def channels_first_upsampling(model) -> int:
    """Rewrite channels-last upsampling (Transpose→Resize→ArgMax over the last axis) channels-first; returns count.

    Same values: bilinear resize never mixes channels. The channels-last form is faster on ONNX Runtime's CPU,
    but TensorRT-RTX 1.7's Myelin compiler fails on a Resize over three axes ("CHECK_EQ(dim_count(),
    stride_order().size())"), so TensorRT gets the channels-first form.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    count = 0
    for resize in [n for n in graph.node if n.op_type == "Resize"]:
        transpose = producer.get(resize.input[0])
        users = consumers.get(resize.output[0], [])
        if (transpose is None or transpose.op_type != "Transpose" or _ints(transpose, "perm") != [0, 2, 3, 1]
                or len(users) != 1 or users[0].op_type != "ArgMax" or _int(users[0], "axis") not in (3, -1)
                or len(resize.input) < 4 or not resize.input[3]):
            continue
        argmax, count = users[0], count + 1
        nchw_sizes, order = f"{resize.name}_nchw_sizes", f"{resize.name}_nchw_order"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 3, 1, 2], np.int64), order))
        gather = helper.make_node("Gather", [resize.input[3], order], [nchw_sizes], axis=0,
                                  name=f"{resize.name}_nchw")
        graph.node.insert(list(graph.node).index(resize), gather)
        resize.input[0], resize.input[3] = transpose.input[0], nchw_sizes
        for attr in argmax.attribute:
            if attr.name == "axis":
                attr.i = 1
        if len(consumers.get(transpose.output[0], [])) == 1:
            graph.node.remove(transpose)
    return count


def _ints(node, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _int(node, name: str) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), None)


def convert(model):
    """fp32 → fp16 with ONNX Runtime's maintained converter; graph inputs and outputs keep their types."""
    # onnxconverter-common's converter mistypes initializers that reach both a blocked op and an Identity
    # (shared LayerNorm weights in SegFormer); ONNX Runtime's fork of it handles them.
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # It reports (at INFO) each weight shared by fp32 and fp16 nodes, which it then keeps in both types.
    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.WARNING)
    blocked = [n.name for n in model.graph.node if n.name.startswith(FP32_NODE_PREFIXES)]
    if not blocked:
        raise SegdemoError("the fused graph has no pre_/post_ nodes — re-export it with `segdemo export`")
    io_types = _io_types(model)
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS], node_block_list=blocked,
    )
    if _io_types(converted) != io_types:  # uint8 image, int64 out_size, uint8 classes must survive unchanged
        raise SegdemoError(f"fp16 conversion changed the graph's interface {io_types} — report this as a bug")
    converted.doc_string = model.doc_string + " [fp16; LayerNorm/Softmax and pre/post-processing in fp32]"
    return converted


def _io_types(model) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}


def probe_image(size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """A deterministic synthetic scene (gradients, discs, bars, texture) for accuracy checks; uint8 [1, H, W, 3]."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 150 + 60], -1)
    for cy, cx, r, colour in ((0.3, 0.3, 0.15, (220, 40, 40)), (0.65, 0.7, 0.2, (30, 160, 60)),
                              (0.75, 0.25, 0.1, (250, 230, 90))):
        disc = (y - cy * height) ** 2 + (x - cx * width) ** 2 < (r * min(height, width)) ** 2
        image[disc] = colour
    image[:, (x[0] // 32 % 2 == 0)] *= 0.85  # vertical bars
    image += np.random.default_rng(0).normal(0, 6, image.shape)  # sensor-like texture
    return np.clip(image, 0, 255).astype(np.uint8)[None]


PROBE_OUT_SIZE = (384, 512)  # not the input size, so the upsampling in the graph is exercised too


def onnx_agreement(fp32_file: Path, other: Path | bytes) -> dict:
    """Pixel agreement of another graph (file or bytes) with the fp32 graph on the probe, both on ONNX Runtime."""
    reference = probe_reference(fp32_file)
    result = run_onnx(other)
    return {"agreement": round(float((reference == result).mean()), 6), "probe": "synthetic 512×512",
            "out_size": list(PROBE_OUT_SIZE), "runtime": f"onnxruntime {_ort_version()} CPU"}


def probe_reference(fp32_file: Path) -> np.ndarray:
    """run_onnx(fp32_file): the class map every check compares against, computed once per version of the file and
    kept beside it (PROBE_SUFFIX), so the accuracy guard runs without ONNX Runtime (in a prepared folder)."""
    stat = fp32_file.stat()
    return _probe_reference(fp32_file, stat.st_mtime_ns, stat.st_size)


PROBE_SUFFIX = ".probe.npy"


@lru_cache(maxsize=4)
def _probe_reference(fp32_file: Path, mtime_ns: int, size: int) -> np.ndarray:
    kept = fp32_file.with_suffix(PROBE_SUFFIX)
    try:
        classes = np.load(kept)
    except (OSError, ValueError):
        classes = None
    if classes is None or classes.shape != (1, *PROBE_OUT_SIZE) or classes.dtype != np.uint8:
        require("onnxruntime", purpose=f"the accuracy check's reference; `segdemo build` leaves it in {kept.name}")
        classes = run_onnx(fp32_file)
        buffer = io.BytesIO()
        np.save(buffer, classes)
        atomic_write(kept, buffer.getvalue())
    classes.setflags(write=False)  # shared by every caller
    return classes


def run_onnx(graph: Path | bytes, pixels: np.ndarray | None = None,
             out_size: tuple[int, int] = PROBE_OUT_SIZE) -> np.ndarray:
    """Class map of `pixels` (default: the probe) from a fused graph on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, options,
                                   providers=["CPUExecutionProvider"])
    pixels = probe_image(tuple(session.get_inputs()[0].shape[1:3])) if pixels is None else pixels
    (classes,) = session.run([OUTPUT_CLASSES], {INPUT_IMAGE: pixels, INPUT_SIZE: np.array(out_size, np.int64)})
    return classes


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)
