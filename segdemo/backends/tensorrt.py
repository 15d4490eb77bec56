"""TensorRT session (backends `tensorrt` and `tensorrt-rtx`, one code path): cached plan, one context, torch buffers."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import lock_for
from ..errors import SegdemoError
from ..export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ..preprocess import ModelInput
from ..spans import INFERENCE, LAYER, LOAD, SpanRecorder

log = logging.getLogger("segdemo")

BACKEND = "tensorrt"


def unavailable_reason(backend: str = BACKEND) -> str | None:
    """Why this TensorRT flavour cannot run here (module, GPU, compute capability, torch CUDA), or None."""
    from ..engine_build import flavour, rtx_supports, rtx_targets
    from ..gpu import detect, no_gpu_reason, torch_cuda_reason

    fl = flavour(backend)
    try:
        trt = fl.load()
    except SegdemoError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 — a broken install (missing shared library) is a reason, not a crash
        return f"{fl.module} failed to import ({type(exc).__name__}: {exc})"
    gpu = detect()
    if gpu is None:
        return no_gpu_reason()
    if backend == "tensorrt-rtx" and not rtx_supports(trt, gpu.capability):
        supported = ", ".join(f"{n[2:-1]}.{n[-1]}" for n in rtx_targets(trt))
        return f"compute capability {gpu.cc} not supported ({gpu.name}; TensorRT-RTX runs on {supported})"
    return torch_cuda_reason()  # device buffers are torch CUDA tensors


class _LayerTimes:
    """Collects IProfiler reports; built lazily because its base class lives in the TensorRT module."""

    @staticmethod
    def create(trt):
        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.layers: list[tuple[str, float]] = []

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.layers.append((layer_name, ms))

        return Profiler()


class TensorRTBackend:
    """Deserialized once per process; every request reuses one execution context, its buffers and its stream."""

    device = "cuda"

    def __init__(self, onnx_file: Path, spans: SpanRecorder, precision: str = "fp32", backend: str = BACKEND,
                 build: Path | None = None, targets: list[str] | None = None, progress=None,
                 min_agreement: float | None = None, **_: Any) -> None:
        from ..engine_build import flavour, trt_logger
        from ..export_fp16 import MIN_AGREEMENT

        reason = unavailable_reason(backend)
        if reason:
            raise SegdemoError(f"backend '{backend}' cannot run here: {reason} — use --backend auto")
        import torch

        self.name, self.precision = backend, precision
        self._torch, self._trt = torch, flavour(backend).load()
        self._options = {"build": build, "targets": targets, "progress": progress}
        self._onnx_file = onnx_file
        self._lock = threading.Lock()  # one context: requests from several threads take turns
        self._logger = trt_logger(self._trt)
        self._runtime = self._trt.Runtime(self._logger)
        self._profiler = None
        self.notes: list[str] = []
        self._open(precision, spans)
        self._guard_accuracy(spans, MIN_AGREEMENT if min_agreement is None else min_agreement)

    # -- loading ---------------------------------------------------------------------------------------------------

    def _open(self, precision: str, spans: SpanRecorder) -> None:
        """Find or build the plan, deserialize it (rebuilding once if it will not load), and bind the buffers."""
        from .. import engine_cache
        from ..engine_build import ensure_engine

        for attempt in range(2):
            with spans.span("engine cache", LOAD, backend=self.name, precision=precision) as attrs:
                self.artifact = ensure_engine(self._onnx_file, precision, self.name, force=attempt > 0,
                                              **self._options)
                attrs.update(cache_hit=self.artifact.cache_hit, plan=self.artifact.plan.name,
                             bytes=self.artifact.plan.stat().st_size)
            with spans.span("deserialize engine", LOAD, backend=self.name, plan=self.artifact.plan.name):
                engine = self._runtime.deserialize_cuda_engine(self.artifact.plan.read_bytes())
            if engine is not None:
                break
            with lock_for(self.artifact.plan):
                engine_cache.invalidate(self.artifact.plan, "TensorRT could not deserialize it (truncated, "
                                                            "corrupt, or built by another version)")
        else:
            raise SegdemoError(f"{self.name} cannot load the engine it just built ({self.artifact.plan.name}) — "
                               f"check the TensorRT log above, or use --backend onnxruntime")
        self.precision = precision
        with spans.span("create context", LOAD, backend=self.name):
            self._bind(engine)
        log.info("%s engine %s: %.1f MB plan, %.1f MB device memory (%s)", self.name, self.artifact.plan.name,
                 self.artifact.plan.stat().st_size / 1e6, self.device_memory_bytes / 1e6,
                 "cache hit" if self.artifact.cache_hit else f"built in {self.artifact.seconds:.1f} s")

    def _bind(self, engine) -> None:
        """One execution context, its own CUDA stream, and device buffers (torch tensors) bound once."""
        torch, trt = self._torch, self._trt
        context = engine.create_execution_context()
        if context is None:
            raise SegdemoError(f"{self.name} could not create an execution context (out of GPU memory?) — "
                               f"close other GPU programs or use --backend onnxruntime")
        self.engine, self.context = engine, context
        self.stream = torch.cuda.Stream()
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]  # reused: requests hold self._lock
        self.image_shape = tuple(engine.get_tensor_shape(INPUT_IMAGE))
        # The plan's optimisation profile (recorded in its sidecar, part of its key) bounds the output size.
        max_values = self.artifact.sidecar["profile"]["out_size"]["max"]
        self.max_out = (int(max_values[0]), int(max_values[1]))
        # Pinned host staging buffers make the copies truly asynchronous on our stream.
        self.host_image = torch.empty(self.image_shape, dtype=torch.uint8, pin_memory=True)
        self.device_image = torch.empty(self.image_shape, dtype=torch.uint8, device="cuda")
        self.device_classes = torch.empty(self.max_out[0] * self.max_out[1], dtype=torch.uint8, device="cuda")
        self.host_classes = torch.empty(self.max_out[0] * self.max_out[1], dtype=torch.uint8, pin_memory=True)
        # out_size is a shape tensor: TensorRT reads its values from host memory when it infers shapes.
        self.host_size = np.zeros(2, dtype=np.int64)
        if not engine.is_shape_inference_io(INPUT_SIZE):
            raise SegdemoError(f"engine input '{INPUT_SIZE}' is not a shape tensor — rebuild with `segdemo build "
                               f"--force`")
        if engine.get_tensor_dtype(OUTPUT_CLASSES) != trt.DataType.UINT8:
            raise SegdemoError("engine output is not uint8 — rebuild with `segdemo build --force`")
        context.set_input_shape(INPUT_IMAGE, self.image_shape)
        context.set_input_shape(INPUT_SIZE, (2,))
        context.set_tensor_address(INPUT_IMAGE, self.device_image.data_ptr())
        context.set_tensor_address(INPUT_SIZE, self.host_size.ctypes.data)
        context.set_tensor_address(OUTPUT_CLASSES, self.device_classes.data_ptr())
        self.device_memory_bytes = int(engine.device_memory_size_v2)

    # -- accuracy guard --------------------------------------------------------------------------------------------

    def _guard_accuracy(self, spans: SpanRecorder, min_agreement: float) -> None:
        """On the first load of a plan, compare it with ONNX Runtime fp32; an fp16 plan below the bar → fp32."""
        from .. import engine_cache
        from ..export_fp16 import PROBE_OUT_SIZE, probe_image, probe_reference

        meta = self.artifact.sidecar
        accuracy = meta.get("accuracy", {})
        agreement = accuracy.get("engine_agreement")
        if agreement is None:
            with spans.span("accuracy check", LOAD, backend=self.name, precision=self.precision) as attrs:
                pixels = probe_image(self.image_shape[1:3])
                reference = probe_reference(self._onnx_file)[0]  # the same probe, input size and output size
                ours = self.run(ModelInput(pixels, PROBE_OUT_SIZE, PROBE_OUT_SIZE), SpanRecorder())
                agreement = float((reference == ours).mean())
                attrs.update(agreement=agreement)
            accuracy = {**accuracy, "engine_agreement": round(agreement, 6), "min_agreement": min_agreement,
                        "status": "measured on the probe image against ONNX Runtime fp32",
                        "gpu": self._gpu_name()}
            meta = {**meta, "accuracy": accuracy}
            self.artifact.sidecar = meta
            with lock_for(self.artifact.plan):
                engine_cache.write_sidecar(self.artifact.plan, meta)
        log.info("%s %s engine agrees with ONNX Runtime fp32 on %.3f %% of probe pixels",
                 self.name, self.precision, agreement * 100)
        if self.precision == "fp16" and agreement < min_agreement:
            message = (f"{self.name} fp16 engine agrees with fp32 on only {agreement * 100:.2f} % of pixels "
                       f"(< {min_agreement * 100:.0f} %): falling back to fp32")
            log.error("!" * 20 + " " + message + " " + "!" * 20)
            self.notes.append(message)
            self.close()
            self._open("fp32", spans)
            self._guard_accuracy(spans, min_agreement)

    def _gpu_name(self) -> str:
        from ..gpu import detect

        gpu = detect()
        return gpu.describe() if gpu else "unknown"

    # -- inference -------------------------------------------------------------------------------------------------

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Upload, execute, download on our stream, timed with CUDA events; per-layer times when `detailed`."""
        torch = self._torch
        height, width = model_input.out_size
        if not (1 <= height <= self.max_out[0] and 1 <= width <= self.max_out[1]):
            raise SegdemoError(f"output size {height}×{width} is outside the engine's profile (up to "
                               f"{self.max_out[0]}×{self.max_out[1]}) — resize the image first")
        with self._lock, spans.span("tensorrt run", INFERENCE, backend=self.name, precision=self.precision,
                                    out_size=[height, width], detailed=detailed) as attrs:
            if self.context is None:
                raise SegdemoError(f"the {self.name} engine was just rebuilt and reloaded — send the image again")
            np.copyto(self.host_image.numpy(), model_input.pixels)
            self.host_size[:] = (height, width)  # read by TensorRT at shape inference and enqueue
            shape = tuple(self.context.get_tensor_shape(OUTPUT_CLASSES))
            if shape != (1, height, width):
                raise SegdemoError(f"{self.name} inferred output shape {shape} for {height}×{width} — rebuild the "
                                   f"engine with `segdemo build --force`")
            count = height * width
            profiler = self._attach_profiler() if detailed else None
            events = self.events
            enqueued_ns = time.perf_counter_ns()
            with torch.cuda.stream(self.stream):
                events[0].record(self.stream)
                self.device_image.copy_(self.host_image, non_blocking=True)
                events[1].record(self.stream)
                ok = self.context.execute_async_v3(self.stream.cuda_stream)
                events[2].record(self.stream)
                self.host_classes[:count].copy_(self.device_classes[:count], non_blocking=True)
                events[3].record(self.stream)
            self.stream.synchronize()
            done_ns = time.perf_counter_ns()
            if not ok:
                raise SegdemoError(f"{self.name} failed to execute (see the TensorRT log) — try --backend onnxruntime")
            device_ms = [events[i].elapsed_time(events[i + 1]) for i in range(3)]
            attrs.update(upload_ms=device_ms[0], execute_ms=device_ms[1], download_ms=device_ms[2])
            self._device_spans(spans, device_ms, enqueued_ns, done_ns, profiler)
            return self.host_classes[:count].numpy().reshape(height, width).copy()

    def _attach_profiler(self):
        """IProfiler on the context; with enqueue_emits_profile off, enqueue stays asynchronous."""
        if self._profiler is None:
            self._profiler = _LayerTimes.create(self._trt)
        self._profiler.layers = []
        self.context.enqueue_emits_profile = False
        self.context.profiler = self._profiler
        return self._profiler

    def _device_spans(self, spans: SpanRecorder, device_ms: list[float], enqueued_ns: int, done_ns: int,
                      profiler) -> None:
        """CUDA-event times as spans on the host clock: the stream's work ends when synchronize returned."""
        total_ns = int(sum(device_ms) * 1e6)
        start = max(enqueued_ns, done_ns - total_ns)
        names = ("upload", "execute", "download")
        execute_start = start + int(device_ms[0] * 1e6)
        for name, ms in zip(names, device_ms, strict=True):
            spans.add_device(f"gpu {name}", INFERENCE, start, int(ms * 1e6), backend=self.name)
            start += int(ms * 1e6)
        if profiler is not None:
            self.context.report_to_profiler()  # layer timing of the launch that just finished
            cursor = execute_start
            for layer, ms in profiler.layers:
                spans.add_device(layer, LAYER, cursor, int(ms * 1e6), backend=self.name)
                cursor += int(ms * 1e6)
            self.context.profiler = None  # back to unprofiled launches

    def close(self) -> None:
        """Drop context, engine and buffers (in that order: the context uses the engine), between requests."""
        with self._lock:
            for attr in ("context", "engine", "device_image", "device_classes", "host_image", "host_classes"):
                if hasattr(self, attr):
                    setattr(self, attr, None)


def create(onnx_file: Path, spans: SpanRecorder, **options) -> TensorRTBackend:
    return TensorRTBackend(onnx_file, spans, backend=BACKEND, **options)
