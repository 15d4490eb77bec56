"""The two TensorRT distributions (full TensorRT, TensorRT-RTX) and what each builds plans for."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ...errors import SegdemoError
from ...optional import require


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its backend name, Python module and pip package."""

    backend: str
    module: str
    package: str

    def load(self) -> ModuleType:
        """Import the TensorRT module, or raise MissingPackageError saying exactly how to install it."""
        return require(self.module, self.package, f"the {self.backend} backend")


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "tensorrt-cu13"),
    "tensorrt-rtx": Flavour("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx-cu13"),
}


def flavour(backend: str) -> Flavour:
    """The TensorRT distribution behind backend `backend` ("tensorrt" or "tensorrt-rtx")."""
    if backend not in FLAVOURS:
        raise SegdemoError(f"unknown TensorRT backend '{backend}' — choose one of {', '.join(FLAVOURS)}")
    return FLAVOURS[backend]


def rtx_targets(trt: ModuleType) -> dict[str, Any]:
    """TensorRT-RTX's ahead-of-time targets by name ('SM86' → ComputeCapability.SM86)."""
    return {name: value for name, value in trt.ComputeCapability.__members__.items() if name.startswith("SM")}


def rtx_supports(trt: ModuleType, capability: tuple[int, int]) -> bool:
    """Whether TensorRT-RTX can build for (and run on) a GPU of this compute capability."""
    return f"SM{capability[0]}{capability[1]}" in rtx_targets(trt)


def resolve_target(fl: Flavour, trt: ModuleType, targets: list[str] | None) -> dict[str, Any]:
    """What the plan is built for: the local GPU (TensorRT), or an AOT target list (TensorRT-RTX)."""
    from ...gpu import detect

    gpu = detect()
    if fl.backend == "tensorrt":
        if targets:
            raise SegdemoError("--target applies to tensorrt-rtx only; tensorrt builds for the GPU it runs on")
        if gpu is None:
            raise SegdemoError("building a tensorrt engine needs a CUDA GPU here — use --backend tensorrt-rtx "
                               "to build ahead of time on a machine without one")
        return {"gpu": gpu.name, "compute_capability": gpu.cc}
    known = rtx_targets(trt)
    if targets:
        names = [t.upper().replace(".", "") for t in targets]
        names = [n if n.startswith("SM") else f"SM{n}" for n in names]
        unknown = [t for t, n in zip(targets, names, strict=True) if n not in known]
        if unknown:
            raise SegdemoError(f"unknown TensorRT-RTX target {', '.join(unknown)} — choose from "
                               f"{', '.join(n.lower() for n in known)}")
        return {"aot_targets": sorted(set(names), key=names.index)}
    if gpu is not None and rtx_supports(trt, gpu.capability):
        return {"aot_targets": [f"SM{gpu.capability[0]}{gpu.capability[1]}"]}  # smaller, tuned for this GPU
    # TensorRT-RTX's own default: one portable plan for its supported GPUs from compute capability 8.0 on.
    return {"aot_targets": ["default"]}
