"""Loading a TensorRT engine, apart from running it (as Polygraphy separates loaders from runners).

`EngineLoader.load` finds or builds the cached plan, deserialises it (rebuilding once if it will not load), has a
runner bind it, and on the plan's first load checks it against ONNX Runtime fp32 — an fp16 plan below the bar is
replaced by the fp32 one. With `max_batch` > 1 it loads the two plans of the batched graphs instead: the network
with a batch profile, and the per-image post-processing beside it (`LoadedEngine.post`). `load_plan` deserialises a
bare plan file, for runners tested against prebuilt plans.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np

from ... import engine_cache
from ...artifacts import lock_for
from ...errors import SegdemoError
from ...graph.batched import ensure_batched_onnx
from ...graph.export import INPUT_SIZE
from ...graph.fp16 import MIN_AGREEMENT, PROBE_OUT_SIZE, ProgressFn, probe_image, probe_reference
from ...image.preprocess import ModelInput
from ...profiling.spans import LOAD, SpanRecorder
from .callbacks import trt_logger
from .engine_build import Engine, ensure_batch_engines, ensure_engine
from .flavour import flavour

if TYPE_CHECKING:
    from ...model.source import ModelSource

log = logging.getLogger("segdemo")


@dataclass
class LoadedEngine:
    """A deserialised engine and where it came from: TensorRT module, cache entry, precision it actually runs."""

    name: str  # the backend: "tensorrt" or "tensorrt-rtx"
    trt: ModuleType
    runtime: Any  # trt.Runtime, kept: the runtime must outlive the engines it deserialised
    engine: Any  # trt.ICudaEngine; None once the runner that owns it has closed
    precision: str  # "fp32" or "fp16" ("unknown" for a bare plan without a sidecar)
    max_out: tuple[int, int]  # the largest (height, width) output the plan's optimisation profile allows
    artifact: Engine | None = None  # the cache entry (plan + sidecar); None for a bare plan file
    notes: list[str] = field(default_factory=list)  # what the user should know (an accuracy fallback)
    max_batch: int = 1  # > 1: this is the batched network's engine, `post` its per-image post-processing
    post: LoadedEngine | None = None


class Runner(Protocol):
    """What the accuracy guard needs of whatever binds a loaded engine."""

    image_shape: tuple[int, ...]
    device_memory_bytes: int

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray: ...

    def close(self) -> None: ...


R = TypeVar("R", bound=Runner)


def runtime_for(backend: str) -> tuple[ModuleType, Any]:
    """The TensorRT module of `backend` and a Runtime that logs through Python logging."""
    trt = flavour(backend).load()
    return trt, trt.Runtime(trt_logger(trt))


def deserialize(runtime: Any, plan: Path, backend: str, spans: SpanRecorder) -> Any:
    """The engine in `plan`, or None if TensorRT cannot deserialise it (truncated, corrupt, other version)."""
    with spans.span("deserialize engine", LOAD, backend=backend, plan=plan.name):
        return runtime.deserialize_cuda_engine(plan.read_bytes())


def profile_max(engine: Any, sidecar: dict[str, Any] | None) -> tuple[int, int]:
    """The largest out_size the plan takes: its sidecar's record of the profile, else the engine's own profile."""
    if sidecar is not None and "profile" in sidecar:  # recorded at build time, part of the cache key
        values = sidecar["profile"]["out_size"]["max"]
    else:
        values = engine.get_tensor_profile_values(0, INPUT_SIZE)[2]  # (profile 0, tensor) → [min, opt, max]
    return int(values[0]), int(values[1])


def load_plan(plan: Path, backend: str = "tensorrt", spans: SpanRecorder | None = None) -> LoadedEngine:
    """Deserialise a prebuilt plan file as it is: no cache lookup, no build, no accuracy guard."""
    trt, runtime = runtime_for(backend)
    engine = deserialize(runtime, plan, backend, spans or SpanRecorder())
    if engine is None:
        raise SegdemoError(f"{backend} cannot deserialize {plan.name} (see the TensorRT log above) — rebuild it "
                           f"with `segdemo build --force`")
    try:  # the sidecar, where there is one, says the precision and the profile
        sidecar = json.loads(engine_cache.sidecar_path(plan).read_text())
    except (OSError, ValueError):
        sidecar = None
    precision = (sidecar or {}).get("precision", "unknown")
    return LoadedEngine(backend, trt, runtime, engine, precision, profile_max(engine, sidecar))


class EngineLoader:
    """Finds or builds the plan of one fused graph (or the two of its batched graphs) for one TensorRT flavour,
    deserialises it and checks it."""

    def __init__(self, onnx_file: Path, backend: str, build_dir: Path | None = None, targets: list[str] | None = None,
                 progress: ProgressFn | None = None, min_agreement: float | None = None,
                 source: ModelSource | None = None, max_batch: int = 1) -> None:
        """`source` and `max_batch` > 1: load the batched graphs' plans (exported from `source` once)."""
        self.onnx_file, self.name = onnx_file, backend
        self.options: dict[str, Any] = {"build_dir": build_dir, "targets": targets, "progress": progress}
        self.min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
        if max_batch > 1 and source is None:
            raise ValueError("batching exports the batched graph from the model: pass source=")
        self.source, self.max_batch = source, max_batch
        self.trt, self.runtime = runtime_for(backend)  # one runtime for every plan this loader deserialises

    def deserialize(self, precision: str, spans: SpanRecorder) -> LoadedEngine:
        """Find or build the plan (with max_batch > 1: both batched plans) and deserialise it, rebuilding once if it
        will not load."""
        if self.max_batch == 1:
            ((engine, artifact),) = self._deserialize_all(
                lambda force: [ensure_engine(self.onnx_file, precision, self.name, force=force, **self.options)],
                precision, spans)
            return LoadedEngine(self.name, self.trt, self.runtime, engine, precision,
                                profile_max(engine, artifact.sidecar), artifact)
        source = cast("ModelSource", self.source)  # __init__ requires it for max_batch > 1
        build_dir = self.options["build_dir"]
        build_dir = build_dir if build_dir is not None else self.onnx_file.parent.parent
        with spans.span("batched onnx export", LOAD, max_batch=self.max_batch):
            network, _ = ensure_batched_onnx(source, build_dir)
        (engine, artifact), (post_engine, post_artifact) = self._deserialize_all(
            lambda force: list(ensure_batch_engines(self.onnx_file, network, source.input_size, self.max_batch,
                                                    precision, self.name, force=force, **self.options)),
            precision, spans)
        post = LoadedEngine(self.name, self.trt, self.runtime, post_engine, post_artifact.sidecar["precision"],
                            profile_max(post_engine, post_artifact.sidecar), post_artifact)
        return LoadedEngine(self.name, self.trt, self.runtime, engine, precision, post.max_out, artifact,
                            max_batch=self.max_batch, post=post)

    def _deserialize_all(self, ensure: Callable[[bool], list[Engine]], precision: str,
                         spans: SpanRecorder) -> list[tuple[Any, Engine]]:
        """(engine, cache entry) of each plan `ensure(force)` finds or builds; a plan that will not deserialise is
        discarded and everything is built again, once."""
        for attempt in range(2):
            with spans.span("engine cache", LOAD, backend=self.name, precision=precision) as attrs:
                artifacts = ensure(attempt > 0)
                attrs.update(cache_hit=all(a.cache_hit for a in artifacts), plan=artifacts[0].plan.name,
                             bytes=sum(a.plan.stat().st_size for a in artifacts))
                if len(artifacts) > 1:
                    attrs.update(plans=[a.plan.name for a in artifacts])
            engines = [deserialize(self.runtime, a.plan, self.name, spans) for a in artifacts]
            if None not in engines:
                return list(zip(engines, artifacts, strict=True))
            for engine, artifact in zip(engines, artifacts, strict=True):
                if engine is None:
                    with lock_for(artifact.plan):
                        engine_cache.invalidate(artifact.plan, "TensorRT could not deserialize it (truncated, "
                                                               "corrupt, or built by another version)")
        failed = [a.plan.name for e, a in zip(engines, artifacts, strict=True) if e is None]
        raise SegdemoError(f"{self.name} cannot load the engine it just built ({', '.join(failed)}) — check "
                           f"the TensorRT log above, or use --backend onnxruntime")

    def load(self, precision: str, spans: SpanRecorder, bind: Callable[[LoadedEngine], R]) -> tuple[LoadedEngine, R]:
        """Deserialise, `bind` (make the runner), guard accuracy; an fp16 plan below the bar gives way to fp32.

        The runner that binds the engine also runs the probe, so loading creates one execution context, not two.
        """
        loaded = self.deserialize(precision, spans)
        with spans.span("create context", LOAD, backend=self.name):
            runner = bind(loaded)
        artifact = cast(Engine, loaded.artifact)  # deserialize's engines come from the cache, never a bare plan
        log.info("%s engine %s: %.1f MB plan, %.1f MB device memory (%s)", self.name, artifact.plan.name,
                 artifact.plan.stat().st_size / 1e6, runner.device_memory_bytes / 1e6,
                 "cache hit" if artifact.cache_hit else f"built in {artifact.seconds:.1f} s")
        fallback = self._guard_accuracy(loaded, runner, spans)
        if fallback is None:
            return loaded, runner
        runner.close()
        loaded, runner = self.load("fp32", spans, bind)
        loaded.notes.insert(0, fallback)
        return loaded, runner

    def _guard_accuracy(self, loaded: LoadedEngine, runner: Runner, spans: SpanRecorder) -> str | None:
        """On a plan's first load, compare it with ONNX Runtime fp32 and record that; the fallback note, if any."""
        artifact = cast(Engine, loaded.artifact)  # from deserialize: a cache entry, never a bare plan
        meta = artifact.sidecar
        accuracy = meta.get("accuracy", {})
        agreement = accuracy.get("engine_agreement")
        if agreement is None:
            with spans.span("accuracy check", LOAD, backend=self.name, precision=loaded.precision) as attrs:
                pixels = probe_image(cast("tuple[int, int]", runner.image_shape[1:3]))  # [batch, H, W, 3]
                reference = probe_reference(self.onnx_file)[0]  # the same probe, input size and output size
                ours = runner.run(ModelInput(pixels, PROBE_OUT_SIZE, PROBE_OUT_SIZE), SpanRecorder())
                agreement = float((reference == ours).mean())
                attrs.update(agreement=agreement)
            accuracy = {**accuracy, "engine_agreement": round(agreement, 6), "min_agreement": self.min_agreement,
                        "status": "measured on the probe image against ONNX Runtime fp32", "gpu": _gpu_name()}
            meta = {**meta, "accuracy": accuracy}
            artifact.sidecar = meta
            with lock_for(artifact.plan):  # measured once; later loads read it back
                engine_cache.write_sidecar(artifact.plan, meta)
        log.info("%s %s engine agrees with ONNX Runtime fp32 on %.3f %% of probe pixels",
                 self.name, loaded.precision, agreement * 100)
        if loaded.precision == "fp16" and agreement < self.min_agreement:
            message = (f"{self.name} fp16 engine agrees with fp32 on only {agreement * 100:.2f} % of pixels "
                       f"(< {self.min_agreement * 100:.0f} %): falling back to fp32")
            log.error("!" * 20 + " " + message + " " + "!" * 20)  # loud: the user asked for fp16 and gets fp32
            return message
        return None


def _gpu_name() -> str:
    from ...gpu import detect

    gpu = detect()
    return gpu.describe() if gpu else "unknown"
