"""Fused ONNX graph → serialized TensorRT plan (one code path for TensorRT and TensorRT-RTX), cached in build/.

The distributions and their targets are in `flavour`, TensorRT's logger and progress adapters in `callbacks`,
loading a plan in `loader` and the `build` subcommand in `commands.build`.
"""

from __future__ import annotations

import datetime
import functools
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ... import engine_cache
from ...artifacts import atomic_write, lock_for, resolve_build_dir
from ...errors import SegdemoError
from ...graph.export import INPUT_IMAGE
from ...graph.fp16 import ProgressFn, ensure_tensorrt_onnx, graph_check
from ...image.preprocess import MAX_OUTPUT_SIDE
from ...optional import missing
from .batched_graphs import ensure_tensorrt_batched_onnx
from .callbacks import progress_monitor, trt_logger
from .flavour import Flavour, flavour, resolve_target, rtx_targets

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
# out_size is a shape tensor: its values set the class map's size, so the profile bounds them. Any size up to the
# 2048 long-side limit of preprocess.output_size is covered; the optimum is a typical photo after that limit.
PROFILE = {"out_size": {"min": [1, 1], "opt": [1536, 2048], "max": [MAX_OUTPUT_SIDE, MAX_OUTPUT_SIDE]}}
GRAPH_SHARE = 0.15  # of a build's progress bar: preparing the graph; the rest is TensorRT's build
# Build settings that change the plan; part of the cache key.
SETTINGS = {"network": "strongly_typed", "profiling_verbosity": "LAYER_NAMES_ONLY", "format": 1}


@dataclass
class Engine:
    """A plan ready to load: where it is, what its sidecar says, and whether it came from the cache."""

    plan: Path
    sidecar: dict[str, Any]
    cache_hit: bool
    seconds: float  # build time, or the cache lookup time on a hit
    graph: Path  # the ONNX graph it was built from (fp16 graph for fp16)


def batch_profile(input_size: tuple[int, int], max_batch: int) -> dict[str, dict[str, list[int]]]:
    """The batched network's profile: uint8 images [1..max_batch, H, W, 3], tuned for a full batch (the batcher fills
    batches when requests queue up, which is when throughput counts)."""
    if max_batch < 1:
        raise SegdemoError(f"max_batch must be at least 1, not {max_batch}")
    image = [*input_size, 3]
    return {INPUT_IMAGE: {"min": [1, *image], "opt": [max_batch, *image], "max": [max_batch, *image]}}


@functools.lru_cache(maxsize=32)
def _graph_sha256(path: str, mtime_ns: int, size: int) -> str:
    return engine_cache.file_sha256(Path(path))


def graph_sha256(path: Path) -> str:
    """SHA-256 of a graph file, hashed once per (path, mtime, size): B4 graphs are large and keys are asked often."""
    stat = path.stat()
    return _graph_sha256(str(path), stat.st_mtime_ns, stat.st_size)


@dataclass
class EngineSpec:
    """Everything that identifies one plan: the graph it is built from, the key and its parts, the plan's path."""

    flavour: Flavour
    trt: ModuleType
    graph: Path
    parts: dict[str, Any]
    key: str
    plan: Path
    profile: dict[str, dict[str, list[int]]]  # input name → min/opt/max: shape values or dimensions
    role: str = "fused"  # which graph: "fused", or the batched pair's "batched network" and "post-processing"


def engine_spec(onnx_file: Path, precision: str = "fp32", backend: str = "tensorrt-rtx", build_dir: Path | None = None,
                targets: list[str] | None = None, progress: ProgressFn | None = None) -> EngineSpec:
    """Work out the plan for the fp32 fused graph `onnx_file` (preparing the graph TensorRT builds from)."""
    _check_precision(precision)
    flavour(backend).load()  # a missing TensorRT says so before any graph is prepared
    graph, _ = ensure_tensorrt_onnx(onnx_file, precision, progress)
    folder = build_dir if build_dir is not None else onnx_file.parent.parent
    return plan_spec(graph, precision, PROFILE, backend, folder, targets)


def batch_specs(onnx_file: Path, network: Path, input_size: tuple[int, int], max_batch: int, precision: str = "fp32",
                backend: str = "tensorrt-rtx", build_dir: Path | None = None, targets: list[str] | None = None,
                progress: ProgressFn | None = None) -> tuple[EngineSpec, EngineSpec]:
    """The plans of the batched graphs: graph.batched's `network` with a batch profile up to `max_batch`, and the
    per-image post-processing (fp32 at either precision, as in the fused graph; one plan whatever the batch)."""
    _check_precision(precision)
    flavour(backend).load()
    profile = batch_profile(input_size, max_batch)
    network_graph, post_graph = ensure_tensorrt_batched_onnx(network, onnx_file, precision, progress)
    build_dir = build_dir if build_dir is not None else onnx_file.parent.parent
    return (plan_spec(network_graph, precision, profile, backend, build_dir, targets, "batched network"),
            plan_spec(post_graph, "fp32", PROFILE, backend, build_dir, targets, "post-processing"))


def plan_spec(graph: Path, precision: str, profile: dict[str, dict[str, list[int]]], backend: str, build_dir: Path,
              targets: list[str] | None, role: str = "fused") -> EngineSpec:
    """The plan of a graph TensorRT builds from: its key covers the graph's bytes, the TensorRT flavour and version,
    the target, the precision, the optimisation profile and the build settings."""
    fl = flavour(backend)
    trt = fl.load()
    parts = {
        "onnx_sha256": graph_sha256(graph), "flavour": fl.module, "version": trt.__version__,
        "target": resolve_target(fl, trt, targets), "precision": precision, "profile": profile, "settings": SETTINGS,
    }
    key = engine_cache.engine_key(parts)
    plan = engine_cache.plan_path(resolve_build_dir(build_dir), graph, fl.module, key)
    return EngineSpec(fl, trt, graph, parts, key, plan, profile, role)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise SegdemoError(f"unknown precision '{precision}' — choose fp32 or fp16")


def ensure_engine(
    onnx_file: Path,
    precision: str = "fp32",
    backend: str = "tensorrt-rtx",
    build_dir: Path | None = None,
    targets: list[str] | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> Engine:
    """The cached plan for the fp32 fused graph `onnx_file` at `precision`, built (under a file lock) if needed."""
    start = time.perf_counter()
    spec = engine_spec(onnx_file, precision, backend, build_dir, targets, _scaled(progress, 0.0, GRAPH_SHARE))
    return ensure_plan(spec, onnx_file, _scaled(progress, GRAPH_SHARE, 1.0), force, start)


def ensure_batch_engines(onnx_file: Path, network: Path, input_size: tuple[int, int], max_batch: int,
                         precision: str = "fp32", backend: str = "tensorrt-rtx", build_dir: Path | None = None,
                         targets: list[str] | None = None, progress: ProgressFn | None = None,
                         force: bool = False) -> tuple[Engine, Engine]:
    """The cached (network, post-processing) plans of the batched graphs (see batch_specs), built if needed."""
    start = time.perf_counter()
    specs = batch_specs(onnx_file, network, input_size, max_batch, precision, backend, build_dir, targets,
                        _scaled(progress, 0.0, GRAPH_SHARE))
    return (ensure_plan(specs[0], onnx_file, _scaled(progress, GRAPH_SHARE, 0.85), force, start),
            ensure_plan(specs[1], onnx_file, _scaled(progress, 0.85, 1.0), force))


def ensure_plan(spec: EngineSpec, onnx_file: Path, progress: ProgressFn | None = None, force: bool = False,
                start: float | None = None) -> Engine:
    """The cached plan of `spec`, built under a file lock when missing, damaged or `force`d; `onnx_file` is the fp32
    fused graph the plan's graph derives from (recorded in the sidecar)."""
    start = time.perf_counter() if start is None else start
    plan, key, precision = spec.plan, spec.key, spec.parts["precision"]
    if not force:
        cached, why = engine_cache.lookup(plan, key)
        if cached:
            return Engine(plan, cached.sidecar, True, time.perf_counter() - start, spec.graph)
    with lock_for(plan):
        if not force:
            cached, why = engine_cache.lookup(plan, key)
            if cached:  # another process built it while we waited for the lock
                log.info("engine %s was built by another process", plan.name)
                return Engine(plan, cached.sidecar, True, time.perf_counter() - start, spec.graph)
        else:
            why = "rebuild requested"
        log.info("building %s engine %s (%s; %s)", spec.flavour.backend, plan.name, precision, why)
        built_start = time.perf_counter()
        data = build_plan(spec.trt, spec.flavour, spec.graph, spec.parts["target"], plan.parent.parent, progress,
                          spec.profile)
        seconds = time.perf_counter() - built_start
        meta = _sidecar(spec, onnx_file, precision, seconds)
        cached = engine_cache.store(plan, data, meta)
    log.info("built %s in %.1f s (%.1f MB)", plan.name, seconds, len(data) / 1e6)
    return Engine(plan, cached.sidecar, False, seconds, spec.graph)


def _sidecar(spec: EngineSpec, onnx_file: Path, precision: str, seconds: float) -> dict[str, Any]:
    from ...gpu import detect

    gpu = detect()
    accuracy: dict[str, Any] = {
        "engine_agreement": None,
        "status": "not measured yet: measured against ONNX Runtime fp32 on the first load on a GPU",
    }
    graph, parts = spec.graph, spec.parts
    if graph != onnx_file:  # what the derived graph (fp16, TensorRT layout) scored against fp32 on ONNX Runtime
        accuracy["onnx_vs_fp32"] = graph_check(graph)
    return {
        "key": spec.key,
        "key_parts": parts,
        "backend": spec.flavour.backend,
        "tensorrt": f"{spec.flavour.module} {spec.trt.__version__}",
        "precision": precision,
        "target": parts["target"],
        "profile": spec.profile,
        "graph": spec.role,
        "onnx": {"file": graph.name, "bytes": graph.stat().st_size, "sha256": parts["onnx_sha256"],
                 "fused_fp32": onnx_file.name},
        "build_seconds": round(seconds, 2),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_on": {"host": platform.node(), "gpu": gpu.describe() if gpu else None},
        "accuracy": accuracy,
    }


def build_plan(trt: ModuleType, fl: Flavour, graph: Path, target: dict, build_dir: Path, progress: ProgressFn | None,
               profile: dict[str, dict[str, list[int]]] = PROFILE) -> bytes:
    """Parse the graph into a strongly typed network and build a serialized plan for `target` and `profile`."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    # Strongly typed: precision comes from the graph's own types (fp16 graph → fp16 engine), as TensorRT 11 and
    # TensorRT-RTX require; there is no FP16 builder flag to set.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if progress:
        progress(0.0, "parsing ONNX")
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SegdemoError(f"{fl.backend} could not parse {graph.name}: {errors} — re-export the graph "
                           f"(`segdemo export`) or report it")
    config = builder.create_builder_config()
    if "aot_targets" in target and target["aot_targets"] != ["default"]:
        known = rtx_targets(trt)
        config.num_compute_capabilities = len(target["aot_targets"])
        for index, name in enumerate(target["aot_targets"]):
            config.set_compute_capability(known[name], index)
    config.add_optimization_profile(_optimisation_profile(builder, network, profile, graph))
    monitor = progress_monitor(trt, progress) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    timing = _load_timing_cache(config, fl, trt, build_dir)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SegdemoError(f"{fl.backend} failed to build an engine from {graph.name} (see the log above) — "
                           f"try --precision fp32 or report it")
    if timing is not None:
        _save_timing_cache(config, timing)
    if progress:
        progress(1.0, "engine built")
    return bytes(plan)


def _optimisation_profile(builder: Any, network: Any, bounds: dict[str, dict[str, list[int]]], graph: Path) -> Any:
    """An IOptimizationProfile from `bounds`: dimensions for inputs with runtime dimensions (the batch), values for
    shape tensors (out_size, whose values are the class map's size)."""
    profile = builder.create_optimization_profile()
    names = set()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        names.add(tensor.name)
        dynamic = -1 in tuple(tensor.shape)
        if tensor.name in bounds:
            b = bounds[tensor.name]
            if dynamic:
                profile.set_shape(tensor.name, b["min"], b["opt"], b["max"])
            else:
                profile.set_shape_input(tensor.name, b["min"], b["opt"], b["max"])
        elif dynamic:
            raise SegdemoError(f"graph input '{tensor.name}' has a dynamic shape {tuple(tensor.shape)} that the "
                               f"optimisation profile does not cover — re-export the graph")
    if unknown := sorted(set(bounds) - names):
        raise SegdemoError(f"{graph.name} has no input {', '.join(unknown)} for the optimisation profile — delete it "
                           f"and its sidecar from build/onnx so it is made again")
    return profile


def _timing_cache_path(fl: Flavour, trt: ModuleType, build_dir: Path) -> Path:
    return build_dir / engine_cache.ENGINE_DIR / f"timing-{fl.module}-{trt.__version__}.cache"


def _load_timing_cache(config: Any, fl: Flavour, trt: ModuleType, build_dir: Path) -> Path | None:
    """Persistent timing cache so rebuilds skip tactic timing; TensorRT-RTX has none (its calls are no-ops)."""
    if fl.backend == "tensorrt-rtx":
        return None
    path = _timing_cache_path(fl, trt, build_dir)
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s unusable; starting a fresh one", path.name)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return path


def _save_timing_cache(config: Any, path: Path) -> None:
    with lock_for(path):
        atomic_write(path, bytes(config.get_timing_cache().serialize()))


def _scaled(progress: ProgressFn | None, low: float, high: float) -> ProgressFn | None:
    """Map a sub-task's 0..1 onto low..high of the overall progress."""
    if progress is None:
        return None
    return lambda fraction, message: progress(low + (high - low) * fraction, message)


def default_backend() -> str:
    """tensorrt where it is installed and a GPU is present (it builds on the GPU), else tensorrt-rtx."""
    from ...gpu import detect

    if missing("tensorrt") is not None:
        return "tensorrt-rtx"
    return "tensorrt" if detect() is not None else "tensorrt-rtx"
