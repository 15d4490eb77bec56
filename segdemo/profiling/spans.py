"""Always-on profiling spans: a cheap, thread-safe recorder that every stage writes to."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOAD, INFERENCE, LAYER = "load", "inference", "layer"
CATEGORIES = (LOAD, INFERENCE, LAYER)
DEVICE_THREAD = "GPU stream"  # lane of spans measured with CUDA events (what the GPU did)


ENGINE_WAIT_SPAN_NS = 100_000  # queueing for the engine shorter than this is not worth a span

@dataclass
class Span:
    """One timed stage; times are `perf_counter_ns` values (device spans are placed on that clock)."""

    name: str
    category: str
    start_ns: int
    duration_ns: int
    thread: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6


class SpanRecorder:
    """Collects the spans of one session load or one request; safe to share between threads."""

    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()

    @contextmanager
    def span(self, name: str, category: str, **attrs: Any) -> Iterator[dict[str, Any]]:
        """Time the block; the yielded dict can take attributes learned inside it."""
        start = time.perf_counter_ns()
        try:
            yield attrs
        finally:
            self.add(Span(name, category, start, time.perf_counter_ns() - start,
                          threading.current_thread().name, attrs))

    def add_device(self, name: str, category: str, start_ns: int, duration_ns: int, **attrs: Any) -> None:
        """Record a span timed on the device (CUDA events), placed on the host clock at `start_ns`."""
        self.add(Span(name, category, start_ns, max(0, duration_ns), DEVICE_THREAD, {"clock": "device", **attrs}))

    def add(self, span: Span) -> None:
        with self._lock:
            self._spans.append(span)

    def extend(self, spans: list[Span]) -> None:
        with self._lock:
            self._spans.extend(spans)

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return sorted(self._spans, key=lambda s: s.start_ns)

    def total_ms(self, category: str) -> float:
        """Wall time covered by the top-level spans of a category (nested spans are not double counted)."""
        spans = [s for s in self.spans if s.category == category]
        total, covered_until = 0, 0
        for s in spans:
            end = s.start_ns + s.duration_ns
            if end <= covered_until:
                continue
            total += end - max(s.start_ns, covered_until)
            covered_until = end
        return total / 1e6

    def durations_ms(self) -> dict[str, float]:
        """Name → summed duration in ms, for logs and the API's timings value."""
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.name] = out.get(s.name, 0.0) + s.duration_ms
        return out


class RequestHistory:
    """The spans of the last N requests, for the latest timeline and p50/p95 summaries."""

    def __init__(self, size: int = 100) -> None:
        self._items: deque[SpanRecorder] = deque(maxlen=size)
        self._lock = threading.Lock()

    def append(self, spans: SpanRecorder) -> None:
        with self._lock:
            self._items.append(spans)

    def clear(self) -> None:
        """Forget the kept requests (a bench's next run summarises its own)."""
        with self._lock:
            self._items.clear()

    def recent(self) -> list[SpanRecorder]:
        """The kept requests' recorders, oldest first."""
        with self._lock:
            return list(self._items)

    def summary(self) -> list[dict[str, Any]]:
        """Per span name: count, p50 and p95 in ms over the kept requests (host and device spans apart)."""
        with self._lock:
            recorders = list(self._items)
        samples: dict[tuple[str, str, str], list[float]] = {}
        for recorder in recorders:
            for name_key, ms in _per_request_totals(recorder).items():
                samples.setdefault(name_key, []).append(ms)
        rows = []
        for (category, name, clock), values in samples.items():
            rows.append({
                "span": name, "category": category, "clock": clock, "count": len(values),
                "p50_ms": round(percentile(values, 50), 3), "p95_ms": round(percentile(values, 95), 3),
            })
        order = {c: i for i, c in enumerate(CATEGORIES)}
        return sorted(rows, key=lambda r: (order.get(r["category"], 9), -r["p50_ms"]))


def _per_request_totals(recorder: SpanRecorder) -> dict[tuple[str, str, str], float]:
    totals: dict[tuple[str, str, str], float] = {}
    for s in recorder.spans:
        if s.category == LAYER:
            continue  # per-layer spans only exist in detailed mode; summarised by the trace viewer instead
        key = (s.category, s.name, s.attrs.get("clock", "host"))
        totals[key] = totals.get(key, 0.0) + s.duration_ms
    return totals


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    return float(np.percentile(values, q))
