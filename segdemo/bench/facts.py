"""What a benchmark records about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path

from ..optional import missing


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    """The CUDA device torch sees, or None (no torch, or no GPU)."""
    if missing("torch"):
        return None
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
