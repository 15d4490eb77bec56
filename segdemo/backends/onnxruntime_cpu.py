"""ONNX Runtime on the CPU: the backend that runs everywhere."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ..optional import missing
from ..preprocess import ModelInput
from ..spans import INFERENCE, LAYER, LOAD, Span, SpanRecorder
from .contract import Backend, LoadContext

log = logging.getLogger("segdemo")


def unavailable_reason() -> str | None:
    return missing("onnxruntime", purpose="the CPU backend")


class OnnxRuntimeBackend(Backend):
    """One InferenceSession per graph, reused for every request."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_file: Path, spans: SpanRecorder, precision: str = "fp32", threads: int | None = None):
        self.onnx_file = onnx_file
        if precision != "fp32":
            log.warning("onnxruntime runs the fp32 graph; precision %s applies to GPU backends only", precision)
        self.precision = "fp32"
        self.threads = threads or os.cpu_count() or 1
        with spans.span("create ort session", LOAD, backend=self.name, file=onnx_file.name):
            self.session = self._new_session()

    def _new_session(self, profile_prefix: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _feeds(model_input: ModelInput) -> dict[str, np.ndarray]:
        return {INPUT_IMAGE: model_input.pixels, INPUT_SIZE: np.array(model_input.out_size, dtype=np.int64)}

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        if detailed:
            return self._run_profiled(model_input, spans)
        with spans.span("execute", INFERENCE, backend=self.name, out_size=list(model_input.out_size)):
            (classes,) = self.session.run([OUTPUT_CLASSES], self._feeds(model_input))
        return classes[0]

    def _run_profiled(self, model_input: ModelInput, spans: SpanRecorder) -> np.ndarray:
        """Run once on a profiling session and turn ONNX Runtime's per-node events into layer spans."""
        with tempfile.TemporaryDirectory(prefix="segdemo-ort-") as folder:
            # Profiling is fixed at session creation and its file is only written when it ends,
            # so detailed mode uses a short-lived session of its own.
            with spans.span("create profiling session", INFERENCE, backend=self.name):
                session = self._new_session(str(Path(folder) / "ort"))
            with spans.span("execute", INFERENCE, backend=self.name, detailed=True,
                            out_size=list(model_input.out_size)):
                (classes,) = session.run([OUTPUT_CLASSES], self._feeds(model_input))
            execute = [s for s in spans.spans if s.name == "execute"][-1]
            events = json.loads(Path(session.end_profiling()).read_text())
        spans.extend(layer_spans(events, execute))
        return classes[0]

    def close(self) -> None:
        self.session = None

    def facts(self) -> dict[str, object]:
        return {"Engine cache": "not used — ONNX Runtime runs the fused graph directly",
                "Threads": f"{self.threads} (intra-op)"}


def layer_spans(events: list[dict], execute: Span) -> list[Span]:
    """ORT profiler node events → layer spans, aligned so the model run starts with our execute span."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    if not runs or not nodes:
        return []
    run = runs[-1]
    offset_ns = execute.start_ns - int(run["ts"] * 1000)
    out = []
    for e in nodes:
        if not run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
            continue
        args = e.get("args", {})
        out.append(Span(
            name=e["name"].removesuffix("_kernel_time"), category=LAYER,
            start_ns=offset_ns + int(e["ts"] * 1000), duration_ns=int(e["dur"] * 1000),
            thread="onnxruntime layers",
            attrs={"op": args.get("op_name", ""), "provider": args.get("provider", ""),
                   "output_bytes": args.get("output_size", "")},
        ))
    return out


def create(onnx_file: Path, spans: SpanRecorder, context: LoadContext, precision: str = "fp32",
           threads: int | None = None) -> OnnxRuntimeBackend:
    """`threads`: ONNX Runtime's intra-op threads (default: every core)."""
    return OnnxRuntimeBackend(onnx_file, spans, precision, threads)
