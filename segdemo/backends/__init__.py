"""Backends run the fused graph: create once, `run(model_input) → class map`, `close()`.

Each backend lives in its own module and imports its heavy runtime only when created,
so `segdemo` imports on any machine. A backend on a device may also offer
`render(source, spans, opacity, out_size, display)`: the whole request (decode or upload, EXIF orientation, resize,
network, class map, counts, display-size picture and overlay) on the device → `Rendered`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import SegdemoError
from ..preprocess import ModelInput
from ..spans import SpanRecorder


class Backend(Protocol):
    """What the pipeline needs from a runtime."""

    name: str
    precision: str
    device: str

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Return the uint8 class map of shape `model_input.out_size`; `detailed` adds per-layer spans."""

    def close(self) -> None:
        """Release the runtime's resources."""


@dataclass(frozen=True)
class Rendered:
    """A request done on a device, every array bit-identical to what the host pipeline makes (pipeline._on_host),
    given the same decoded pixels."""

    class_map: np.ndarray  # uint8 ids at the original (upright) size: restore_size of the out_size map
    counts: np.ndarray  # pixels per class id of class_map, int64 [256]
    display_image: np.ndarray  # RGB at display size (Pillow's bilinear resize of the decoded image)
    display_map: np.ndarray  # restore_size(out_size map, display size)
    display_overlay: np.ndarray  # visuals.overlay(display_image, colour_mask(display_map), opacity)
    opacity: float


@dataclass(frozen=True)
class Rung:
    """One backend of the ladder and whether it can run here."""

    name: str
    available: bool
    reason: str


# Order of preference for --backend auto; later issues insert GPU backends before onnxruntime.
LADDER: tuple[str, ...] = ("tensorrt", "tensorrt-rtx", "torch-cuda", "onnxruntime")
_MODULES = {"onnxruntime": "onnxruntime_cpu", "torch-cuda": "torch_cuda", "tensorrt": "tensorrt",
            "tensorrt-rtx": "tensorrt_rtx"}


def _module(name: str):
    if name not in _MODULES:
        raise SegdemoError(f"unknown backend '{name}' — choose one of auto, {', '.join(LADDER)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def probe(name: str) -> Rung:
    """Whether backend `name` can run on this machine, with the reason if not."""
    reason = _module(name).unavailable_reason()
    return Rung(name, reason is None, reason or "available")


def ladder() -> list[Rung]:
    """Every backend in order of preference, each with its availability and reason."""
    return [probe(name) for name in LADDER]


def choose(requested: str = "auto") -> tuple[str, list[Rung]]:
    """Pick the backend to use and report the ones skipped on the way."""
    if requested != "auto":
        rung = probe(requested)
        if not rung.available:
            raise SegdemoError(f"backend '{requested}' is not usable here: {rung.reason} — try --backend auto")
        return requested, [rung]
    rungs = ladder()
    for rung in rungs:
        if rung.available:
            return rung.name, rungs
        logging.getLogger("segdemo").info("backend %s skipped: %s", rung.name, rung.reason)
    raise SegdemoError("no backend is usable: " + "; ".join(f"{r.name}: {r.reason}" for r in rungs))


# fp16 where the backend keeps the numerically sensitive ops in fp32 and checks agreement; ONNX Runtime on the CPU
# has no fast fp16 path, so it stays fp32.
PREFERRED_PRECISION = {"onnxruntime": "fp32"}
PRECISIONS = ("auto", "fp16", "fp32")


def precision_for(name: str, requested: str = "auto") -> str:
    """The precision backend `name` runs at: the request, or its preferred one for "auto"."""
    if requested not in PRECISIONS:
        raise SegdemoError(f"unknown precision '{requested}' — choose one of {', '.join(PRECISIONS)}")
    return PREFERRED_PRECISION.get(name, "fp16") if requested == "auto" else requested


def create(name: str, onnx_file: Path, spans: SpanRecorder, **options) -> Backend:
    """Create backend `name` for the fused graph at `onnx_file`; backends ignore options they do not use."""
    return _module(name).create(onnx_file, spans, **options)
