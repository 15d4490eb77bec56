"""What `segdemo doctor` reports: versions, and a tiny end-to-end self-test per backend (segdemo.commands.doctor)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .optional import MissingPackageError, require

SELF_TEST_MODEL = "random:tiny"
MODULES = ("numpy", "torch", "onnx", "onnxruntime", "transformers", "tensorrt", "tensorrt_rtx", "cuda.bindings",
           "pycuda")


def versions() -> dict[str, str]:
    """Version of each library segdemo may use, or why it is missing."""
    out = {"python": platform.python_version()}
    for name in MODULES:
        try:
            module = require(name)
        except MissingPackageError:
            out[name] = "not installed"
            continue
        except Exception as exc:  # noqa: BLE001 — a broken install is reported, not raised
            out[name] = f"broken ({type(exc).__name__}: {exc})"
            continue
        version = getattr(module, "__version__", getattr(module, "VERSION_TEXT", "?"))  # pycuda: VERSION_TEXT
        if name == "torch":
            version += f" (CUDA {module.version.cuda})" if module.version.cuda else " (CPU build)"
        out[name] = version
    return out


def self_test(name: str, onnx_file: Path, source, reference: np.ndarray) -> tuple[bool, str]:
    """Create backend `name`, segment the probe image, and compare with ONNX Runtime fp32."""
    from . import backends
    from .graph.fp16 import MIN_AGREEMENT, PROBE_OUT_SIZE, probe_image
    from .image.preprocess import ModelInput
    from .profiling.spans import SpanRecorder

    start = time.perf_counter()
    backend = None
    try:
        backend = backends.create(name, onnx_file, SpanRecorder(),
                                  backends.LoadContext(source, onnx_file.parent.parent), precision="fp32")
        load_s = time.perf_counter() - start
        pixels = probe_image(source.input_size)
        run_start = time.perf_counter()
        classes = backend.run(ModelInput(pixels, PROBE_OUT_SIZE, PROBE_OUT_SIZE), SpanRecorder())
        run_ms = (time.perf_counter() - run_start) * 1e3
    except Exception as exc:  # noqa: BLE001 — the doctor reports every failure and goes on
        return False, f"FAILED: {type(exc).__name__}: {exc}"
    finally:
        if backend is not None:
            backend.close()  # before the next self-test, so GPU memory is not held twice
    if classes.shape != tuple(PROBE_OUT_SIZE) or classes.dtype != np.uint8:
        return False, f"FAILED: class map {classes.shape} {classes.dtype}, expected {PROBE_OUT_SIZE} uint8"
    agreement = float((classes == reference).mean())
    ok = agreement >= MIN_AGREEMENT
    return ok, (f"{'ok' if ok else 'FAILED'}: {agreement * 100:.2f} % pixel agreement with ONNX Runtime fp32, "
                f"load {load_s:.1f} s, run {run_ms:.0f} ms, device {backend.device}")


# Run in a child process: a runtime that rejects the GPU must not take the doctor down with it.
_RTX_LOAD = """
import sys
import tensorrt_rtx as trt
runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
with open(sys.argv[1], "rb") as fh:
    engine = runtime.deserialize_cuda_engine(fh.read())
print("LOADED" if engine is not None else "REFUSED")
"""


def rtx_build_check(onnx_file: Path, build_dir: Path) -> str:
    """Build a tiny TensorRT-RTX plan ahead of time; where a GPU exists, also ask its runtime to load it."""
    from .backends.tensorrt.engine_build import ensure_engine
    from .gpu import detect

    try:
        start = time.perf_counter()
        engine = ensure_engine(onnx_file, "fp32", "tensorrt-rtx", build_dir)
    except Exception as exc:  # noqa: BLE001 — the doctor reports every failure and goes on
        return f"AOT build FAILED: {type(exc).__name__}: {exc}"
    line = (f"AOT build ok ({engine.plan.stat().st_size / 1e6:.1f} MB plan, "
            f"{'cached' if engine.cache_hit else f'{time.perf_counter() - start:.1f} s'})")
    if detect() is None:
        return line
    try:  # the runtime's own verdict on this GPU, not just our compute-capability table
        result = subprocess.run([sys.executable, "-c", _RTX_LOAD, str(engine.plan)], capture_output=True,
                                text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return line + "; runtime load timed out"
    lines = result.stdout.strip().splitlines()
    verdict = lines[-1] if lines else "no answer"
    messages = [m for m in lines[:-1] + result.stderr.strip().splitlines() if "[E]" in m or "[F]" in m or "rror" in m]
    detail = messages[0].split("] ", 3)[-1][:200] if messages else "no message"  # TensorRT logs to stdout
    if verdict == "LOADED":
        return line + "; its runtime loads the plan on this GPU"
    return line + f"; its runtime does NOT load it on this GPU ({verdict}, exit {result.returncode}: {detail})"
