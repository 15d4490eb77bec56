"""What GPU this machine has, found without importing TensorRT (torch.cuda first, nvidia-smi as a fallback)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

from .optional import missing


@dataclass(frozen=True)
class Gpu:
    """One CUDA device: its name, compute capability, and how we learned about it."""

    name: str
    capability: tuple[int, int]
    memory_gb: float
    driver: str  # driver version where known, else ""
    seen_by: str  # "torch" or "nvidia-smi"

    @property
    def cc(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    def describe(self) -> str:
        extra = f", driver {self.driver}" if self.driver else ""
        return f"{self.name} (compute capability {self.cc}, {self.memory_gb:.0f} GB{extra}; seen by {self.seen_by})"


def package_versions(dists: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution that is present (metadata only: nothing is imported)."""
    import importlib.metadata as md

    found = {}
    for dist in dists:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return found


def torch_cuda_reason() -> str | None:
    """Why torch cannot drive a CUDA GPU here, or None when it can."""
    reason = missing("torch", purpose="PyTorch; its CUDA build for GPU backends")
    if reason:
        return reason
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


@functools.cache
def detect() -> Gpu | None:
    """The first CUDA GPU, or None; nvidia-smi covers machines whose torch is a CPU build."""
    if torch_cuda_reason() is None:
        import torch

        props = torch.cuda.get_device_properties(0)
        return Gpu(props.name, (props.major, props.minor), props.total_memory / 2**30, _smi_driver(), "torch")
    return _from_nvidia_smi()


def no_gpu_reason(runtime_answer: str | None = None) -> str:
    """Why no GPU was found, in words (for the backend ladder): nvidia-smi's answer, and the backend's CUDA runtime's
    where it has one (torch's for torch-cuda, the CUDA binding's for TensorRT)."""
    smi = "nvidia-smi not found" if shutil.which("nvidia-smi") is None else "nvidia-smi lists none"
    return f"no CUDA GPU ({smi}{f'; {runtime_answer}' if runtime_answer else ''})"


def _smi(fields: str) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in out.splitlines() if line.strip()]
    return [part.strip() for part in lines[0].split(",")] if lines else None


def _smi_driver() -> str:
    row = _smi("driver_version")
    return row[0] if row else ""


def _from_nvidia_smi() -> Gpu | None:
    row = _smi("name,compute_cap,memory.total,driver_version")
    if not row or len(row) < 4:
        return None
    try:
        major, minor = (int(x) for x in row[1].split("."))
        memory_gb = float(row[2]) / 1024
    except ValueError:
        return None
    return Gpu(row[0], (major, minor), memory_gb, row[3], "nvidia-smi")
