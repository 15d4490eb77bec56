"""A TensorRT run's device times as spans: CUDA-event phases on the host clock, per-layer times from an IProfiler."""

from __future__ import annotations

from typing import Any

from ...profiling.spans import INFERENCE, LAYER, SpanRecorder


def layer_profiler(trt: Any) -> Any:  # trt: the tensorrt or tensorrt_rtx module
    """An IProfiler collecting (layer, ms); made here because its base class lives in the TensorRT module."""

    class Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.layers: list[tuple[str, float]] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.layers.append((layer_name, ms))

    return Profiler()


def attach_profiler(context: Any, profiler: Any) -> Any:
    """Profile the context's next launch; with enqueue_emits_profile off, enqueue stays asynchronous."""
    profiler.layers = []
    context.enqueue_emits_profile = False
    context.profiler = profiler
    return profiler


def device_spans(spans: SpanRecorder, names: tuple[str, ...], device_ms: list[float], enqueued_ns: int,
                 done_ns: int, backend: str) -> list[int]:
    """A "gpu <name>" span per consecutive stream phase timed by CUDA events, on the host clock: the stream's work
    ends when synchronize returned. Returns each phase's start (ns)."""
    start = max(enqueued_ns, done_ns - int(sum(device_ms) * 1e6))
    starts = []
    for name, ms in zip(names, device_ms, strict=True):
        spans.add_device(f"gpu {name}", INFERENCE, start, int(ms * 1e6), backend=backend)
        starts.append(start)
        start += int(ms * 1e6)
    return starts


def layer_spans(spans: SpanRecorder, context: Any, profiler: Any, start_ns: int, backend: str) -> None:
    """Layer spans of the context's last launch from `start_ns` on; the context goes back to unprofiled launches."""
    context.report_to_profiler()  # layer timing of the launch that just finished
    cursor = start_ns
    for layer, ms in profiler.layers:
        spans.add_device(layer, LAYER, cursor, int(ms * 1e6), backend=backend)
        cursor += int(ms * 1e6)
    context.profiler = None
