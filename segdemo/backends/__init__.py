"""Backends run the fused graph; this module is their registry: the ladder of preference, availability with the
reason a backend cannot run here, and creation with validated options.

The contract every backend follows is in `contract` (`Backend`; the optional `DeviceRenderer`, `BatchRunner` and
`BatchRenderer`). Each backend lives in its own module, which imports its heavy runtime only when the backend is
created, so `segdemo` imports anywhere. A module provides `unavailable_reason() -> str | None` and
`create(onnx_file, spans, context, **options)`; its options are the keyword parameters of that `create` — anything
else is refused, naming what it takes. A module that builds from the model source, not from the fused graph, says
`READS_GRAPH = False` and is handed no graph: its session never exports one (seconds of a first start, and torch
with transformers on a front end whose engine is remote).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SegdemoError
from ..profiling.spans import SpanRecorder
from .contract import Backend, BatchRenderer, BatchRunner, DeviceRenderer, LoadContext, Rendered, RenderJob

__all__ = ["Backend", "BatchRenderer", "BatchRunner", "DeviceRenderer", "LoadContext", "Rendered", "RenderJob", "Rung",
           "choose", "create", "kind", "ladder", "probe", "precision_for", "reads_graph"]


@dataclass(frozen=True)
class Rung:
    """One backend of the ladder and whether it can run here."""

    name: str
    available: bool
    reason: str


# Order of preference for --backend auto: GPU backends first, the CPU backend last. triton is named by address only.
LADDER: tuple[str, ...] = ("tensorrt", "tensorrt-rtx", "torch-cuda", "onnxruntime")
_MODULES = {"onnxruntime": "onnxruntime_cpu", "torch-cuda": "torch_cuda", "tensorrt": "tensorrt.runner",
            "tensorrt-rtx": "tensorrt.rtx", "triton": "triton"}
# A remote backend is named by its address: triton://host:8001/model (gRPC) or triton+http://host:8000/model.
_URL_SCHEMES = {"triton://": "triton", "triton+grpc://": "triton", "triton+http://": "triton"}


def kind(name: str) -> str:
    """The backend module's name for a --backend value: itself, or e.g. "triton" for triton://host:8001/model."""
    return next((k for scheme, k in _URL_SCHEMES.items() if name.startswith(scheme)), name)


def _module(name: str):
    if kind(name) not in _MODULES:
        raise SegdemoError(f"unknown backend '{name}' — choose one of auto, {', '.join(LADDER)}, or a server "
                           f"such as triton://host:8001/segformer")
    return importlib.import_module(f"{__name__}.{_MODULES[kind(name)]}")


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


# fp16 where the backend keeps the numerically sensitive ops in fp32 and checks agreement; on the CPU, int8 where its
# guard passes (the CPU backend falls back to fp32 loudly otherwise): ONNX Runtime's CPU has no fast fp16 path.
PREFERRED_PRECISION = {"onnxruntime": "int8", "triton": "auto"}  # triton: whatever the server's model runs
PRECISIONS = ("auto", "fp16", "fp32", "int8")
INT8_BACKENDS = ("onnxruntime",)


def precision_for(name: str, requested: str = "auto") -> str:
    """The precision backend `name` runs at: the request, or its preferred one for "auto"."""
    if requested not in PRECISIONS:
        raise SegdemoError(f"unknown precision '{requested}' — choose one of {', '.join(PRECISIONS)}")
    if requested == "int8" and kind(name) not in INT8_BACKENDS:
        raise SegdemoError(f"precision int8 runs on the CPU backend ({', '.join(INT8_BACKENDS)}), not on {name} — "
                           f"use fp16 or auto there")
    return PREFERRED_PRECISION.get(kind(name), "fp16") if requested == "auto" else requested


def reads_graph(name: str) -> bool:
    """Whether backend `name` runs the fused ONNX graph (else it builds from the model source, and gets no graph)."""
    return bool(getattr(_module(name), "READS_GRAPH", True))


def create(name: str, onnx_file: Path | None, spans: SpanRecorder, context: LoadContext | None = None,
           **options: Any) -> Backend:
    """Create backend `name` for the fused graph at `onnx_file` (None for one that does not read it); an option it
    does not take is an error."""
    if onnx_file is None and reads_graph(name):
        raise ValueError(f"backend '{name}' runs the fused graph: pass its file")
    factory = _module(name).create
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("onnx_file", "spans", "context", "url")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SegdemoError(f"backend '{name}' has no option {', '.join(unknown)} — it takes "
                           f"{', '.join(accepted) or 'none'}")
    if kind(name) != name:  # an address: the backend gets it whole
        options["url"] = name
    return factory(onnx_file, spans, context or LoadContext(), **options)
