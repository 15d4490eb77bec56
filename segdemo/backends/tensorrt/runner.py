"""TensorRT backend (`tensorrt`; `tensorrt-rtx` subclasses it): a loader finds and checks the plan, a runner runs it.

`TensorRTRunner` binds one deserialised engine (one execution context, its stream, device buffers, CUDA events — all
through `cuda`, no PyTorch) and runs requests on it; it can be made from a prebuilt plan file alone. With max_batch > 1
the backend loads the batched graphs' two plans instead and `batch.TensorRTBatchRunner` runs them, every request
included, so a request's pixels do not depend on the batch it rides in. Loading lives in `loader`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ...errors import SegdemoError
from ...graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ...image.preprocess import ModelInput
from ...profiling.spans import INFERENCE, LOAD, SpanRecorder
from ..contract import Backend, BatchRunner
from .batch import TensorRTBatchRunner
from .cuda import DeviceBuffer, Event, PinnedBuffer, Stream
from .loader import EngineLoader, LoadedEngine, load_plan
from .timing import attach_profiler, device_spans, layer_profiler, layer_spans

if TYPE_CHECKING:
    from ...graph.fp16 import ProgressFn
    from ...model.source import ModelSource
    from .. import LoadContext
    from .engine_build import Engine

BACKEND = "tensorrt"


def unavailable_reason(backend: str = BACKEND) -> str | None:
    """Why this TensorRT flavour cannot run here (module, GPU, compute capability, CUDA binding), or None."""
    from ...gpu import detect, no_gpu_reason
    from ...optional import missing
    from .cuda import binding, binding_reason
    from .flavour import flavour, rtx_supports, rtx_targets

    fl = flavour(backend)
    try:
        reason = missing(fl.module, fl.package, f"the {backend} backend")
    except Exception as exc:  # noqa: BLE001 — a broken install (missing shared library) is a reason, not a crash
        return f"{fl.module} failed to import ({type(exc).__name__}: {exc})"
    if reason:
        return reason
    no_binding = binding_reason()
    gpu = detect()
    if gpu is None:  # the binding's own answer says why where there is one
        return no_gpu_reason(None if no_binding else binding().device_reason())
    if backend == "tensorrt-rtx" and not rtx_supports(trt := fl.load(), gpu.capability):
        supported = ", ".join(f"{n[2:-1]}.{n[-1]}" for n in rtx_targets(trt))
        return f"compute capability {gpu.cc} not supported ({gpu.name}; TensorRT-RTX runs on {supported})"
    return no_binding or binding().device_reason()  # buffers, streams and events come from the CUDA binding


class TensorRTRunner:
    """Runs one deserialised engine: one execution context, its stream and buffers, bound once and reused."""

    def __init__(self, loaded: LoadedEngine) -> None:
        self.loaded = loaded  # the runner owns its engine: close() releases it
        self.name, self.precision = loaded.name, loaded.precision
        self._trt = loaded.trt
        self._lock = threading.Lock()  # one context: requests from several threads take turns
        self._profiler = None
        self._bind(loaded.engine)

    @classmethod
    def from_plan(cls, plan: Path, backend: str = BACKEND, spans: SpanRecorder | None = None) -> TensorRTRunner:
        """A runner for a prebuilt plan file alone (no cache, no build, no accuracy guard); `backend` is its flavour."""
        spans = spans or SpanRecorder()
        loaded = load_plan(plan, backend, spans)
        with spans.span("create context", LOAD, backend=backend):
            return cls(loaded)

    def _bind(self, engine: Any) -> None:
        """One execution context, its own CUDA stream, and device buffers bound once."""
        trt = self._trt
        context = engine.create_execution_context()
        if context is None:
            raise SegdemoError(f"{self.name} could not create an execution context (out of GPU memory?) — "
                               f"close other GPU programs or use --backend onnxruntime")
        self.engine, self.context = engine, context
        self.stream = Stream()
        self.events = [Event() for _ in range(4)]  # reused: requests hold self._lock
        self.image_shape = tuple(engine.get_tensor_shape(INPUT_IMAGE))
        self.max_out = self.loaded.max_out  # the plan's optimisation profile bounds the output size
        # Pinned host staging buffers make the copies truly asynchronous on our stream.
        image_bytes, classes_bytes = int(np.prod(self.image_shape)), self.max_out[0] * self.max_out[1]  # uint8
        self.host_image, self.device_image = PinnedBuffer(image_bytes), DeviceBuffer(image_bytes)
        self.device_classes, self.host_classes = DeviceBuffer(classes_bytes), PinnedBuffer(classes_bytes)
        # out_size is a shape tensor: TensorRT reads its values from host memory when it infers shapes.
        self.host_size = np.zeros(2, dtype=np.int64)
        if not engine.is_shape_inference_io(INPUT_SIZE):
            raise SegdemoError(f"engine input '{INPUT_SIZE}' is not a shape tensor — rebuild with `segdemo build "
                               f"--force`")
        if engine.get_tensor_dtype(OUTPUT_CLASSES) != trt.DataType.UINT8:
            raise SegdemoError("engine output is not uint8 — rebuild with `segdemo build --force`")
        context.set_input_shape(INPUT_IMAGE, self.image_shape)
        context.set_input_shape(INPUT_SIZE, (2,))
        context.set_tensor_address(INPUT_IMAGE, self.device_image.address())
        context.set_tensor_address(INPUT_SIZE, self.host_size.ctypes.data)
        context.set_tensor_address(OUTPUT_CLASSES, self.device_classes.address())
        self.device_memory_bytes = int(engine.device_memory_size_v2)

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Upload, execute, download on our stream, timed with CUDA events; per-layer times when `detailed`."""
        height, width = model_input.out_size
        if not (1 <= height <= self.max_out[0] and 1 <= width <= self.max_out[1]):
            raise SegdemoError(f"output size {height}×{width} is outside the engine's profile (up to "
                               f"{self.max_out[0]}×{self.max_out[1]}) — resize the image first")
        with self._lock, spans.span("tensorrt run", INFERENCE, backend=self.name, precision=self.precision,
                                    out_size=[height, width], detailed=detailed) as attrs:
            if self.context is None:
                raise SegdemoError(f"the {self.name} engine was just rebuilt and reloaded — send the image again")
            np.copyto(self.host_image.view(np.uint8, self.image_shape), model_input.pixels)
            self.host_size[:] = (height, width)  # read by TensorRT at shape inference and enqueue
            shape = tuple(self.context.get_tensor_shape(OUTPUT_CLASSES))
            if shape != (1, height, width):
                raise SegdemoError(f"{self.name} inferred output shape {shape} for {height}×{width} — rebuild the "
                                   f"engine with `segdemo build --force`")
            count = height * width
            profiler = self._attach_profiler() if detailed else None
            events = self.events
            enqueued_ns = time.perf_counter_ns()
            stream = self.stream
            events[0].record(stream)
            stream.upload(self.device_image, self.host_image, self.host_image.nbytes)
            events[1].record(stream)
            ok = self.context.execute_async_v3(stream.handle)
            events[2].record(stream)
            stream.download(self.host_classes, self.device_classes, count)
            events[3].record(stream)
            stream.synchronize()
            done_ns = time.perf_counter_ns()
            if not ok:
                raise SegdemoError(f"{self.name} failed to execute (see the TensorRT log) — try --backend onnxruntime")
            device_ms = [events[i].elapsed_ms(events[i + 1]) for i in range(3)]
            attrs.update(upload_ms=device_ms[0], execute_ms=device_ms[1], download_ms=device_ms[2])
            self._device_spans(spans, device_ms, enqueued_ns, done_ns, profiler)
            return self.host_classes.view(np.uint8, (height, width)).copy()

    def _attach_profiler(self) -> Any:
        """IProfiler on the context for the next launch (see timing.attach_profiler)."""
        if self._profiler is None:
            self._profiler = layer_profiler(self._trt)
        return attach_profiler(self.context, self._profiler)

    def _device_spans(self, spans: SpanRecorder, device_ms: list[float], enqueued_ns: int, done_ns: int,
                      profiler: Any) -> None:
        """CUDA-event times as spans on the host clock, and the layers' when profiled."""
        starts = device_spans(spans, ("upload", "execute", "download"), device_ms, enqueued_ns, done_ns, self.name)
        if profiler is not None:
            layer_spans(spans, self.context, profiler, starts[1], self.name)

    def close(self) -> None:
        """Drop context, engine and buffers (in that order: the context uses the engine); safe to call twice."""
        with self._lock:  # a request still running finishes first
            self.context = self.engine = None
            for attr in ("device_image", "device_classes", "host_image", "host_classes", "stream"):
                if getattr(self, attr, None) is not None:
                    getattr(self, attr).close()
                    setattr(self, attr, None)
            self.loaded.engine = None


class TensorRTBackend(Backend, BatchRunner):
    """Deserialized once per process; every request reuses one execution context, its buffers and its stream (with
    `max_batch` > 1: the batched network's and the post-processing's contexts)."""

    name = BACKEND
    device = "cuda"

    def __init__(self, onnx_file: Path, spans: SpanRecorder, precision: str = "fp32", build_dir: Path | None = None,
                 targets: list[str] | None = None, progress: ProgressFn | None = None,
                 min_agreement: float | None = None, source: ModelSource | None = None, max_batch: int = 1) -> None:
        reason = unavailable_reason(self.name)
        if reason:
            raise SegdemoError(f"backend '{self.name}' cannot run here: {reason} — use --backend auto")
        self.max_batch = max_batch
        loader = EngineLoader(onnx_file, self.name, build_dir, targets, progress, min_agreement, source, max_batch)
        bind = TensorRTBatchRunner if max_batch > 1 else TensorRTRunner
        self.loaded, self.runner = loader.load(precision, spans, bind)
        # What the app, the bench and the tests read: the precision actually run (after any accuracy fallback).
        self.precision, self.notes = self.loaded.precision, self.loaded.notes
        # EngineLoader's engines are cache entries (a bare plan file, with no artifact, is load_plan's)
        self.artifact = cast("Engine", self.loaded.artifact)
        self.device_memory_bytes = self.runner.device_memory_bytes

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """The class map of `model_input` from the engine; `detailed` adds per-layer spans."""
        return self.runner.run(model_input, spans, detailed)

    def run_batch(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        """Each input's class map: one engine call with max_batch > 1, else one run per input."""
        if isinstance(self.runner, TensorRTBatchRunner):
            return self.runner.run_batch(inputs, spans)
        return [self.runner.run(model_input, spans) for model_input in inputs]

    def close(self) -> None:
        """Release the context, the engine and the buffers (safe to call twice)."""
        self.runner.close()

    def facts(self) -> dict[str, Any]:
        """The engine cache entry behind the session: plan, key, build time, device memory, accuracy guard."""
        meta = self.artifact.sidecar
        accuracy = meta.get("accuracy", {})
        agreement = accuracy.get("engine_agreement")
        facts = {
            "Engine": _plan_fact(self.artifact),
            "Engine key": f"`{meta.get('key', '?')[:16]}…` ({meta.get('tensorrt', '?')}, target {meta.get('target')})",
            "Build time": f"{meta.get('build_seconds', '?')} s, {meta.get('built_at', '?')}",
            "Device memory": f"{self.device_memory_bytes / 1e6:.1f} MB",
            "Accuracy guard": accuracy.get("status", "?") + (
                f" — engine agreement {agreement * 100:.2f} %" if isinstance(agreement, float) else ""),
        }
        if self.loaded.post is not None:
            batch = meta.get("profile", {}).get(INPUT_IMAGE, {})
            facts["Batching"] = (f"up to {self.max_batch} requests per run (network plan's batch profile "
                                 f"{batch.get('min', ['?'])[0]}–{batch.get('max', ['?'])[0]}, optimised for "
                                 f"{batch.get('opt', ['?'])[0]}; post-processing per image: "
                                 f"{_plan_fact(cast('Engine', self.loaded.post.artifact))})")
        return facts


def _plan_fact(artifact: Engine) -> str:
    return (f"`{artifact.plan}` ({artifact.plan.stat().st_size / 1e6:.1f} MB, "
            f"{'cache hit' if artifact.cache_hit else 'built now'})")


def create(onnx_file: Path, spans: SpanRecorder, context: LoadContext, precision: str = "fp32",
           targets: list[str] | None = None, min_agreement: float | None = None,
           max_batch: int = 1) -> TensorRTBackend:
    """`targets`: TensorRT-RTX compute capabilities to build for; `min_agreement`: the fp16 accuracy bar;
    `max_batch` > 1: the batched graphs' plans (exported once beside the fused graph; needs context.source)."""
    return TensorRTBackend(onnx_file, spans, precision, context.build_dir, targets, context.progress, min_agreement,
                           *batch_options(context, max_batch))


def batch_options(context: LoadContext, max_batch: int) -> tuple[ModelSource | None, int]:
    """(source, max_batch) for the loader, refused before anything loads when batching lacks the model."""
    if max_batch > 1 and context.source is None:
        raise ValueError("batching exports the batched graph from the model: pass a LoadContext with source=")
    return context.source if max_batch > 1 else None, max_batch
