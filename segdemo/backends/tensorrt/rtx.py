"""TensorRT-RTX: the same loader and runner as `runner`, with the tensorrt_rtx module and its GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...profiling.spans import SpanRecorder
from . import runner

if TYPE_CHECKING:
    from .. import LoadContext

BACKEND = "tensorrt-rtx"


def unavailable_reason() -> str | None:
    """Why TensorRT-RTX cannot run here (module, GPU, compute capability, CUDA binding), or None."""
    return runner.unavailable_reason(BACKEND)


class TensorRTRTXBackend(runner.TensorRTBackend):
    """The TensorRT backend built and run with TensorRT-RTX (plans built ahead of time, even without a GPU)."""

    name = BACKEND


def create(onnx_file: Path, spans: SpanRecorder, context: LoadContext, precision: str = "fp32",
           targets: list[str] | None = None, min_agreement: float | None = None,
           max_batch: int = 1) -> TensorRTRTXBackend:
    """`targets`: compute capabilities to build for (e.g. ["sm86"]); `min_agreement`: the fp16 accuracy bar;
    `max_batch` > 1: the batched graphs' plans (as runner.create)."""
    return TensorRTRTXBackend(onnx_file, spans, precision, context.build_dir, targets, context.progress, min_agreement,
                              *runner.batch_options(context, max_batch))
