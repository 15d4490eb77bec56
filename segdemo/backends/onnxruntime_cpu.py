"""ONNX Runtime on the CPU: the backend that runs everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ..preprocess import ModelInput
from ..spans import INFERENCE, LOAD, SpanRecorder


def unavailable_reason() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    return None


class OnnxRuntimeBackend:
    """One InferenceSession per graph, reused for every request."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_file: Path, spans: SpanRecorder, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        self.precision = precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        with spans.span("create ort session", LOAD, backend=self.name, file=onnx_file.name):
            self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    def run(self, model_input: ModelInput, spans: SpanRecorder) -> np.ndarray:
        feeds = {INPUT_IMAGE: model_input.pixels, INPUT_SIZE: np.array(model_input.out_size, dtype=np.int64)}
        with spans.span("execute", INFERENCE, backend=self.name, out_size=list(model_input.out_size)):
            (classes,) = self.session.run([OUTPUT_CLASSES], feeds)
        return classes[0]

    def close(self) -> None:
        self.session = None


def create(onnx_file: Path, spans: SpanRecorder, **options) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(onnx_file, spans, **options)
