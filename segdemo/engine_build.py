"""Fused ONNX graph → serialized TensorRT plan (one code path for TensorRT and TensorRT-RTX), cached in build/."""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import logging
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import engine_cache
from .artifacts import atomic_write, build_dir, lock_for
from .cli import MODEL_HELP, command
from .errors import SegdemoError
from .export_fp16 import ProgressFn, ensure_tensorrt_onnx, graph_check
from .model_source import DEFAULT_MODEL
from .preprocess import MAX_OUTPUT_SIDE

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
# out_size is a shape tensor: its values set the class map's size, so the profile bounds them. Any size up to the
# 2048 long-side limit of preprocess.output_size is covered; the optimum is a typical photo after that limit.
PROFILE = {"out_size": {"min": [1, 1], "opt": [1536, 2048], "max": [MAX_OUTPUT_SIDE, MAX_OUTPUT_SIDE]}}
# Build settings that change the plan; part of the cache key.
SETTINGS = {"network": "strongly_typed", "profiling_verbosity": "LAYER_NAMES_ONLY", "format": 1}


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its backend name, Python module and pip package."""

    backend: str
    module: str
    package: str

    def load(self):
        """Import the TensorRT module, or say exactly how to install it."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise SegdemoError(f"{self.module} is not installed ({exc}) — pip install {self.package}") from None


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "tensorrt-cu13"),
    "tensorrt-rtx": Flavour("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx-cu13"),
}


def flavour(backend: str) -> Flavour:
    if backend not in FLAVOURS:
        raise SegdemoError(f"unknown TensorRT backend '{backend}' — choose one of {', '.join(FLAVOURS)}")
    return FLAVOURS[backend]


def rtx_targets(trt) -> dict[str, Any]:
    """TensorRT-RTX's ahead-of-time targets by name ('SM86' → ComputeCapability.SM86)."""
    return {name: value for name, value in trt.ComputeCapability.__members__.items() if name.startswith("SM")}


def rtx_supports(trt, capability: tuple[int, int]) -> bool:
    return f"SM{capability[0]}{capability[1]}" in rtx_targets(trt)


def resolve_target(fl: Flavour, trt, targets: list[str] | None) -> dict[str, Any]:
    """What the plan is built for: the local GPU (TensorRT), or an AOT target list (TensorRT-RTX)."""
    from .gpu import detect

    gpu = detect()
    if fl.backend == "tensorrt":
        if targets:
            raise SegdemoError("--target applies to tensorrt-rtx only; tensorrt builds for the GPU it runs on")
        if gpu is None:
            raise SegdemoError("building a tensorrt engine needs a CUDA GPU here — use --backend tensorrt-rtx "
                               "to build ahead of time on a machine without one")
        return {"gpu": gpu.name, "compute_capability": gpu.cc}
    known = rtx_targets(trt)
    if targets:
        names = [t.upper().replace(".", "") for t in targets]
        names = [n if n.startswith("SM") else f"SM{n}" for n in names]
        unknown = [t for t, n in zip(targets, names, strict=True) if n not in known]
        if unknown:
            raise SegdemoError(f"unknown TensorRT-RTX target {', '.join(unknown)} — choose from "
                               f"{', '.join(n.lower() for n in known)}")
        return {"aot_targets": sorted(set(names), key=names.index)}
    if gpu is not None and rtx_supports(trt, gpu.capability):
        return {"aot_targets": [f"SM{gpu.capability[0]}{gpu.capability[1]}"]}  # smaller, tuned for this GPU
    # TensorRT-RTX's own default: one portable plan for its supported GPUs from compute capability 8.0 on.
    return {"aot_targets": ["default"]}


@dataclass
class Engine:
    """A plan ready to load: where it is, what its sidecar says, and whether it came from the cache."""

    plan: Path
    sidecar: dict[str, Any]
    cache_hit: bool
    seconds: float  # build time, or the cache lookup time on a hit
    graph: Path  # the ONNX graph it was built from (fp16 graph for fp16)


@functools.lru_cache(maxsize=32)
def _graph_sha256(path: str, mtime_ns: int, size: int) -> str:
    return engine_cache.file_sha256(Path(path))


def graph_sha256(path: Path) -> str:
    stat = path.stat()
    return _graph_sha256(str(path), stat.st_mtime_ns, stat.st_size)


@dataclass
class EngineSpec:
    """Everything that identifies one plan: the graph it is built from, the key and its parts, the plan's path."""

    flavour: Flavour
    trt: Any
    graph: Path
    parts: dict[str, Any]
    key: str
    plan: Path


def engine_spec(onnx_file: Path, precision: str = "fp32", backend: str = "tensorrt-rtx", build: Path | None = None,
                targets: list[str] | None = None, progress: ProgressFn | None = None) -> EngineSpec:
    """Work out the plan for the fp32 fused graph `onnx_file` (preparing the graph TensorRT builds from)."""
    if precision not in PRECISIONS:
        raise SegdemoError(f"unknown precision '{precision}' — choose fp32 or fp16")
    fl = flavour(backend)
    trt = fl.load()
    build = build_dir(build if build is not None else onnx_file.parent.parent)
    graph, _ = ensure_tensorrt_onnx(onnx_file, precision, progress)
    parts = {
        "onnx_sha256": graph_sha256(graph), "flavour": fl.module, "version": trt.__version__,
        "target": resolve_target(fl, trt, targets), "precision": precision, "profile": PROFILE, "settings": SETTINGS,
    }
    key = engine_cache.engine_key(parts)
    return EngineSpec(fl, trt, graph, parts, key, engine_cache.plan_path(build, graph, fl.module, key))


def ensure_engine(
    onnx_file: Path,
    precision: str = "fp32",
    backend: str = "tensorrt-rtx",
    build: Path | None = None,
    targets: list[str] | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> Engine:
    """The cached plan for the fp32 fused graph `onnx_file` at `precision`, built (under a file lock) if needed."""
    start = time.perf_counter()
    graph_share = 0.15  # of the progress bar: preparing the graph; the rest is TensorRT's build
    spec = engine_spec(onnx_file, precision, backend, build, targets, _scaled(progress, 0.0, graph_share))
    plan, key = spec.plan, spec.key
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
        data = build_plan(spec.trt, spec.flavour, spec.graph, spec.parts["target"], plan.parent.parent,
                          _scaled(progress, graph_share, 1.0))
        seconds = time.perf_counter() - built_start
        meta = _sidecar(spec, onnx_file, precision, seconds)
        cached = engine_cache.store(plan, data, meta)
    log.info("built %s in %.1f s (%.1f MB)", plan.name, seconds, len(data) / 1e6)
    return Engine(plan, cached.sidecar, False, seconds, spec.graph)


def _sidecar(spec: EngineSpec, onnx_file: Path, precision: str, seconds: float) -> dict[str, Any]:
    from .gpu import detect

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
        "profile": PROFILE,
        "onnx": {"file": graph.name, "bytes": graph.stat().st_size, "sha256": parts["onnx_sha256"],
                 "fused_fp32": onnx_file.name},
        "build_seconds": round(seconds, 2),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_on": {"host": platform.node(), "gpu": gpu.describe() if gpu else None},
        "accuracy": accuracy,
    }


@functools.cache  # TensorRT keeps the first logger it sees; a second one only earns a warning
def trt_logger(trt):
    """A TensorRT logger that speaks through Python logging (warnings and errors only, unless -v)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg: str) -> None:
            level = {
                trt.ILogger.INTERNAL_ERROR: logging.ERROR, trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING, trt.ILogger.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            if "has Int64 binding" in msg:  # the parser's reminder about out_size; the session binds int64
                level = logging.DEBUG
            logging.getLogger(trt.__name__).log(level, "%s", msg)

    return Logger()


def progress_monitor(trt, progress: ProgressFn):
    """An IProgressMonitor turning TensorRT's nested build phases into one fraction for `progress`."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several of its threads
            self._phases: dict[str, list] = {}  # name → [parent, steps, done]

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = [parent_phase, max(1, num_steps), 0]
            self._emit(phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][2] = step + 1
            self._emit(phase_name)
            return True

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._phases.pop(phase_name, None)

        def _emit(self, phase_name: str) -> None:
            with self._lock:
                chain, name = [], phase_name
                while name in self._phases:  # innermost → outermost
                    chain.append(self._phases[name])
                    name = self._phases[name][0]
                fraction, scale = 0.0, 1.0
                for _, steps, done in reversed(chain):  # each level subdivides one step of its parent
                    fraction += scale * min(done, steps) / steps
                    scale /= steps
            progress(min(fraction, 1.0), phase_name)

    return Monitor()


def build_plan(trt, fl: Flavour, graph: Path, target: dict, build: Path, progress: ProgressFn | None) -> bytes:
    """Parse the graph into a strongly typed network and build a serialized plan for `target`."""
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
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.name in PROFILE:
            bounds = PROFILE[tensor.name]
            profile.set_shape_input(tensor.name, bounds["min"], bounds["opt"], bounds["max"])
        elif -1 in tuple(tensor.shape):
            raise SegdemoError(f"graph input '{tensor.name}' has a dynamic shape {tuple(tensor.shape)} that the "
                               f"optimisation profile does not cover — re-export the graph")
    config.add_optimization_profile(profile)
    monitor = progress_monitor(trt, progress) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    timing = _load_timing_cache(config, fl, trt, build)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SegdemoError(f"{fl.backend} failed to build an engine from {graph.name} (see the log above) — "
                           f"try --precision fp32 or report it")
    if timing is not None:
        _save_timing_cache(config, timing)
    if progress:
        progress(1.0, "engine built")
    return bytes(plan)


def _timing_cache_path(fl: Flavour, trt, build: Path) -> Path:
    return build / engine_cache.ENGINE_DIR / f"timing-{fl.module}-{trt.__version__}.cache"


def _load_timing_cache(config, fl: Flavour, trt, build: Path) -> Path | None:
    """Persistent timing cache so rebuilds skip tactic timing; TensorRT-RTX has none (its calls are no-ops)."""
    if fl.backend == "tensorrt-rtx":
        return None
    path = _timing_cache_path(fl, trt, build)
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s unusable; starting a fresh one", path.name)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return path


def _save_timing_cache(config, path: Path) -> None:
    with lock_for(path):
        atomic_write(path, bytes(config.get_timing_cache().serialize()))


def _scaled(progress: ProgressFn | None, low: float, high: float) -> ProgressFn | None:
    """Map a sub-task's 0..1 onto low..high of the overall progress."""
    if progress is None:
        return None
    return lambda fraction, message: progress(low + (high - low) * fraction, message)


class ConsoleProgress:
    """A one-line progress bar on stderr (a line per stage when stderr is not a terminal)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self._last = ("", -1)
        self._lock = threading.Lock()

    def __call__(self, fraction: float, message: str) -> None:
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        with self._lock:
            if (message, percent) == self._last:
                return
            changed = message != self._last[0]
            self._last = (message, percent)
            if self.tty:
                filled = self.width * percent // 100
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}%  {message[:60]:60s}")
                sys.stderr.flush()
            elif changed:
                print(f"  {percent:3d}%  {message}", file=sys.stderr)

    def close(self) -> None:
        if self.tty and self._last[1] >= 0:
            sys.stderr.write("\n")


def default_backend() -> str:
    """tensorrt where it is installed and a GPU is present (it builds on the GPU), else tensorrt-rtx."""
    from .gpu import detect

    try:
        importlib.import_module("tensorrt")
    except ImportError:
        return "tensorrt-rtx"
    return "tensorrt" if detect() is not None else "tensorrt-rtx"


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="engine precision (default fp16)")
    p.add_argument("--backend", default="auto", choices=("auto", *FLAVOURS),
                   help="auto: tensorrt with a GPU where installed, else tensorrt-rtx (builds without a GPU)")
    p.add_argument("--target", default=None,
                   help="tensorrt-rtx only: comma-separated compute capabilities to build for, e.g. sm86,sm89 "
                        "(default: this GPU if supported, else TensorRT-RTX's portable default)")
    p.add_argument("--build-dir", type=Path, default=None, help="artifact cache folder (default build/)")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")


@command("build", "build (or find cached) the TensorRT engine of the fused graph", _build_args)
def _build(args: argparse.Namespace) -> int:
    from .export import ensure_onnx
    from .model_source import resolve

    backend = default_backend() if args.backend == "auto" else args.backend
    targets = [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None
    bar = ConsoleProgress()
    start = time.perf_counter()
    try:
        source = resolve(args.model)
        bar(0.0, "exporting ONNX")
        onnx_file, _ = ensure_onnx(source, args.build_dir)
        engine = ensure_engine(onnx_file, args.precision, backend, args.build_dir, targets, bar, args.force)
    finally:
        bar.close()
    meta = engine.sidecar
    print(f"plan     {engine.plan}  {engine.plan.stat().st_size / 1e6:.1f} MB")
    print(f"sidecar  {engine_cache.sidecar_path(engine.plan)}")
    target = meta["target"].get("aot_targets") or f"{meta['target']['gpu']} ({meta['target']['compute_capability']})"
    print(f"engine   {meta['tensorrt']}, {meta['precision']}, target {target}")
    if engine.cache_hit:
        print(f"cache    hit: verified {meta['plan']['bytes'] / 1e6:.1f} MB in {engine.seconds:.2f} s "
              f"(built {meta['built_at']} in {meta['build_seconds']:.1f} s)")
    else:
        print(f"cache    miss: built in {engine.seconds:.1f} s (total {time.perf_counter() - start:.1f} s)")
    onnx_check = meta["accuracy"].get("onnx_vs_fp32")
    if onnx_check:
        print(f"accuracy {meta['precision']} graph agrees with fp32 on {onnx_check['agreement'] * 100:.3f} % of "
              f"pixels (ONNX Runtime); the engine itself is checked on its first load on a GPU")
    for note in source.notes:
        log.warning(note)
    return 0
