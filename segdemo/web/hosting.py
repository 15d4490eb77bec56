"""Hugging Face Spaces hosting: the `@spaces.GPU` decorator for ZeroGPU hardware, harmless everywhere else.

On ZeroGPU a Space has no GPU until a function decorated with `spaces.GPU` runs; the `spaces` package then runs it
in a forked worker process holding a GPU (workers are reused between calls). So on ZeroGPU the session must be
created inside that worker — CUDA initialised in the main process would break the fork — and the app loads it on
the first request there. Elsewhere (dedicated GPU Spaces, CPU Spaces, any other machine) the decorator returns the
function unchanged and the session loads at start-up as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

GPU_SECONDS_ENV = "SEGDEMO_GPU_SECONDS"  # ZeroGPU: the longest a request may hold the GPU (its quota is per second)
DEFAULT_GPU_SECONDS = 60  # the first request of a worker loads the session (cached network: seconds)


def on_zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU hardware (the variable the `spaces` package reads)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "yes")


def gpu_seconds() -> int:
    """The GPU time a request asks ZeroGPU for ($SEGDEMO_GPU_SECONDS, default 60)."""
    return int(os.environ.get(GPU_SECONDS_ENV, DEFAULT_GPU_SECONDS))


def gpu_function(fn: F, seconds: int | None = None) -> F:
    """`fn` decorated with `spaces.GPU(duration=seconds)` when the `spaces` package is installed; `fn` itself when it
    is not (the decorator is a no-op off ZeroGPU, so both give the same function there)."""
    try:
        import spaces
    except ImportError:
        if on_zero_gpu():
            raise ImportError("ZeroGPU Spaces need the `spaces` package: pip install spaces") from None
        return fn
    return spaces.GPU(fn, duration=seconds or gpu_seconds())
