"""Loading a TensorRT engine, apart from running it (as Polygraphy separates loaders from runners).

`EngineLoader.load` finds or builds the cached plan, deserialises it (rebuilding once if it will not load), has a
runner bind it, and on the plan's first load checks it against ONNX Runtime fp32 — an fp16 plan below the bar is
replaced by the fp32 one. `load_plan` deserialises a bare plan file, for runners tested against prebuilt plans.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import numpy as np

from .. import engine_cache
from ..artifacts import lock_for
from ..engine_build import Engine, ensure_engine
from ..errors import SegdemoError
from ..export import INPUT_SIZE
from ..export_fp16 import MIN_AGREEMENT, PROBE_OUT_SIZE, ProgressFn, probe_image, probe_reference
from ..preprocess import ModelInput
from ..spans import LOAD, SpanRecorder
from ..trt_flavour import flavour
from ..trt_logging import trt_logger

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
    """Finds or builds the plan of one fused graph for one TensorRT flavour, deserialises it and checks it."""

    def __init__(self, onnx_file: Path, backend: str, build: Path | None = None, targets: list[str] | None = None,
                 progress: ProgressFn | None = None, min_agreement: float | None = None) -> None:
        self.onnx_file, self.name = onnx_file, backend
        self.options = {"build": build, "targets": targets, "progress": progress}
        self.min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
        self.trt, self.runtime = runtime_for(backend)  # one runtime for every plan this loader deserialises

    def deserialize(self, precision: str, spans: SpanRecorder) -> LoadedEngine:
        """Find or build the plan and deserialise it, rebuilding once if it will not load."""
        for attempt in range(2):
            with spans.span("engine cache", LOAD, backend=self.name, precision=precision) as attrs:
                artifact = ensure_engine(self.onnx_file, precision, self.name, force=attempt > 0, **self.options)
                attrs.update(cache_hit=artifact.cache_hit, plan=artifact.plan.name,
                             bytes=artifact.plan.stat().st_size)
            engine = deserialize(self.runtime, artifact.plan, self.name, spans)
            if engine is not None:
                break
            with lock_for(artifact.plan):
                engine_cache.invalidate(artifact.plan, "TensorRT could not deserialize it (truncated, corrupt, or "
                                                       "built by another version)")
        else:
            raise SegdemoError(f"{self.name} cannot load the engine it just built ({artifact.plan.name}) — check "
                               f"the TensorRT log above, or use --backend onnxruntime")
        return LoadedEngine(self.name, self.trt, self.runtime, engine, precision,
                            profile_max(engine, artifact.sidecar), artifact)

    def load(self, precision: str, spans: SpanRecorder, bind: Callable[[LoadedEngine], R]) -> tuple[LoadedEngine, R]:
        """Deserialise, `bind` (make the runner), guard accuracy; an fp16 plan below the bar gives way to fp32.

        The runner that binds the engine also runs the probe, so loading creates one execution context, not two.
        """
        loaded = self.deserialize(precision, spans)
        with spans.span("create context", LOAD, backend=self.name):
            runner = bind(loaded)
        artifact = loaded.artifact
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
        artifact = loaded.artifact
        meta = artifact.sidecar
        accuracy = meta.get("accuracy", {})
        agreement = accuracy.get("engine_agreement")
        if agreement is None:
            with spans.span("accuracy check", LOAD, backend=self.name, precision=loaded.precision) as attrs:
                pixels = probe_image(runner.image_shape[1:3])
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
    from ..gpu import detect

    gpu = detect()
    return gpu.describe() if gpu else "unknown"
