"""TensorRT-RTX: the same session as backends/tensorrt.py, with the tensorrt_rtx module and its GPU support."""

from __future__ import annotations

from pathlib import Path

from ..spans import SpanRecorder
from . import tensorrt

BACKEND = "tensorrt-rtx"


def unavailable_reason() -> str | None:
    return tensorrt.unavailable_reason(BACKEND)


def create(onnx_file: Path, spans: SpanRecorder, **options) -> tensorrt.TensorRTBackend:
    return tensorrt.TensorRTBackend(onnx_file, spans, backend=BACKEND, **options)
