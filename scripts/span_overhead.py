"""Measure what always-on spans cost per request, against the request's own time (issue: profiling)."""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from segdemo.pipeline import Session
from segdemo.profiling.spans import INFERENCE, SpanRecorder


def per_span_ns(n: int = 200_000) -> float:
    recorder = SpanRecorder()
    start = time.perf_counter_ns()
    for _ in range(n):
        with recorder.span("x", INFERENCE, size=1):
            pass
    return (time.perf_counter_ns() - start) / n


def main(model: str = "random:b0") -> None:
    session = Session(model, "onnxruntime")
    image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    session.segment(image)
    times, counts = [], []
    for _ in range(10):
        result = session.segment(image)
        result.overlay(0.5)
        times.append(result.spans.total_ms(INFERENCE))
        counts.append(len(result.spans.spans))
    cost_ms = per_span_ns() * statistics.median(counts) / 1e6
    request_ms = statistics.median(times)
    print(f"{model} 1024x768: request p50 {request_ms:.1f} ms, {statistics.median(counts):.0f} spans/request, "
          f"{cost_ms * 1e3:.1f} us of span bookkeeping = {100 * cost_ms / request_ms:.4f} % of the request")


if __name__ == "__main__":
    main(*sys.argv[1:])
