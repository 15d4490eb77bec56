"""Always-on profiling spans: a cheap, thread-safe recorder that every stage writes to."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

LOAD, INFERENCE, LAYER = "load", "inference", "layer"


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
