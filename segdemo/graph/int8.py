"""The int8 network graph for ONNX Runtime on the CPU, made once and checked against fp32 (the accuracy guard).

A network graph (uint8 pixels → channels-last logits: the fused graph's network part, or `batched`'s) with its
MatMul weights quantized to int8 per output channel and its activations quantized at run time (ONNX Runtime's
dynamic quantization). Convolutions stay fp32: quantizing them cost agreement (patch embeddings, decode head) and,
statically quantized, was slower on ONNX Runtime's CPU kernels (docs/benchmarks.md, "int8 on the CPU"). The graph
and its sidecar — the settings and the guard's measurement and decision — live in build/onnx/, keyed by the source
graph, ONNX Runtime's version, the settings, this module and the CPU (int8 kernels differ between instruction sets,
and so may their rounding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write, cpu_signature, digest, lock_for, memo_sha256, package_version
from ..engine_cache import sidecar_path
from ..image.preprocess import prepare
from ..image.upsample import class_map
from .export import INPUT_IMAGE

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # each probe photo's int8 class map must agree this well with fp32's, else fp32 runs
# scikit-image's photographs, the app's examples (web/examples.EXAMPLE_PHOTOS): a desk, a cat, a launch pad, a person
PROBE_PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")
# What quantize_dynamic is asked for (also part of the artifact's key). MatMuls with a constant weight only: the
# attention's activation × activation products stay fp32 (quantizing them was slower and less accurate).
SETTINGS: dict[str, Any] = {"method": "dynamic", "op_types": ["MatMul"], "weights": "QInt8", "per_channel": True,
                            "reduce_range": False, "matmul_const_b_only": True, "excluded": "pre_ nodes"}

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class Int8Graph:
    """The int8 network graph on disk and its sidecar: settings, agreement per photo, the guard's decision."""

    path: Path
    record: dict[str, Any]
    cache_hit: bool

    @property
    def lowest(self) -> float:
        """The lowest agreement with fp32 over the probe photos (a fraction)."""
        return min(self.record["agreement"].values())

    def passes(self, min_agreement: float | None = None) -> bool:
        """Whether int8 may run: the decision recorded with the graph, or one at another bar (tests force it)."""
        if min_agreement is None or min_agreement == self.record["min_agreement"]:
            return bool(self.record["int8"])
        return self.lowest >= min_agreement

    def summary(self, min_agreement: float | None = None) -> str:
        """One line for the Engine tab and the log: the agreement per photo and what the guard decided."""
        bar = self.record["min_agreement"] if min_agreement is None else min_agreement
        photos = ", ".join(f"{name} {value * 100:.2f} %" for name, value in self.record["agreement"].items())
        verdict = "int8 runs" if self.passes(min_agreement) else "below the bar, so fp32 runs"
        return f"int8 network agrees with fp32 on {photos} of pixels (each must reach {bar * 100:g} %): {verdict}"


def int8_path(network: Path) -> Path:
    """Where the int8 form of `network` lives for this ONNX Runtime, these settings and this CPU."""
    key = _key(network)
    stem = network.stem.rsplit("-", 1)[0]  # drop the network graph's own hash; the key covers it
    return network.parent / f"{stem}-int8-{key[:16]}.onnx"


def _key(network: Path) -> str:
    return digest(network.name, package_version("onnxruntime"), json.dumps(SETTINGS, sort_keys=True),
                  Path(__file__).read_bytes(), cpu_signature())


def ensure_int8_network(network: Path, progress: ProgressFn | None = None) -> Int8Graph:
    """The int8 form of the `network` graph with its guard's record, made and checked once; a damaged one is made
    again."""
    path = int8_path(network)
    if record := _sound(path, _key(network)):
        return Int8Graph(path, record, cache_hit=True)
    with lock_for(path):
        if record := _sound(path, _key(network)):  # made by another process meanwhile
            return Int8Graph(path, record, cache_hit=True)
        if path.exists() or sidecar_path(path).exists():
            log.warning("the int8 graph %s is damaged or stale; making it again", path.name)
        start = time.perf_counter()
        _report(progress, 0.0, "quantizing the network to int8")
        data = quantize(network)
        _report(progress, 0.5, f"checking int8 against fp32 on {len(PROBE_PHOTOS)} photos")
        agreement = photo_agreement(network, data)
        record = {
            "key": _key(network), "source": network.name, "settings": SETTINGS,
            "onnxruntime": package_version("onnxruntime"), "agreement": agreement,
            "probe": f"scikit-image photos {', '.join(PROBE_PHOTOS)} at their own size",
            "min_agreement": MIN_AGREEMENT, "int8": min(agreement.values()) >= MIN_AGREEMENT,
            "seconds": round(time.perf_counter() - start, 2),
            "graph": {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        }
        sidecar_path(path).unlink(missing_ok=True)  # a crash between the writes leaves a graph nobody trusts
        atomic_write(path, data)
        atomic_write(sidecar_path(path), (json.dumps(record, indent=2) + "\n").encode())
        memo_sha256(path, path.parent.parent)  # remembered now, so the next start reads no weights to check it
        _report(progress, 1.0, "int8 graph ready")
    graph = Int8Graph(path, record, cache_hit=False)
    log.log(logging.INFO if graph.passes() else logging.WARNING, "%s (made in %.1f s)", graph.summary(),
            record["seconds"])
    return graph


def _sound(path: Path, key: str) -> dict[str, Any] | None:
    """The sidecar's record if it vouches for the graph on disk (key, size, checksum), else None."""
    try:
        record = json.loads(sidecar_path(path).read_text())
        graph = record["graph"]
        if record["key"] != key or path.stat().st_size != graph["bytes"]:
            return None
        # Remembered by path, size, mtime and inode (build/hashes): a warm start reads no weights, and a file
        # rewritten in place, even at the same size, is hashed again.
        if memo_sha256(path, path.parent.parent) != graph["sha256"]:
            return None
        record["agreement"] = {str(k): float(v) for k, v in record["agreement"].items()}
        record["int8"] = bool(record["int8"])
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def quantize(network: Path) -> bytes:
    """The int8 graph of `network` (its pre_ nodes — uint8 → normalised float — stay as they are)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(network))
    excluded = [node.name for node in model.graph.node if node.name.startswith("pre_")]
    with tempfile.TemporaryDirectory(dir=network.parent, prefix=".int8-") as folder, _quiet_quantizer():
        target = Path(folder) / "int8.onnx"
        quantize_dynamic(model, target, op_types_to_quantize=SETTINGS["op_types"],
                         per_channel=SETTINGS["per_channel"], reduce_range=SETTINGS["reduce_range"],
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": SETTINGS["matmul_const_b_only"]})
        quantized = onnx.load(str(target))
    quantized.doc_string = (model.doc_string + " [int8: MatMul weights per channel, activations at run time]").strip()
    return quantized.SerializeToString()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger (a pre-processing hint, a line per tensor); keep it out
    of the app's log while it runs."""
    def from_elsewhere(record: logging.LogRecord) -> bool:
        return f"onnxruntime{os.sep}quantization" not in record.pathname

    root = logging.getLogger()
    root.addFilter(from_elsewhere)
    try:
        yield
    finally:
        root.removeFilter(from_elsewhere)


def photo_agreement(network: Path, int8: Path | bytes) -> dict[str, float]:
    """Per probe photo, the share of pixels whose class is the same from the int8 network as from the fp32 one
    (each photo resized to the network's input as a request is, its class map at the photo's own size)."""
    import skimage.data

    reference, quantized = _session(network), _session(int8)
    input_size = tuple(reference.get_inputs()[0].shape[1:3])
    agreement = {}
    for name in PROBE_PHOTOS:
        model_input = prepare(getattr(skimage.data, name)(), input_size)
        maps = []
        for session in (reference, quantized):
            (logits,) = session.run(None, {INPUT_IMAGE: model_input.pixels})
            maps.append(class_map(logits[0], model_input.out_size))
        agreement[name] = round(float((maps[0] == maps[1]).mean()), 6)
    return agreement


def _session(graph: Path | bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, options,
                                providers=["CPUExecutionProvider"])


def _report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)
