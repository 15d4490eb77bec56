"""The engine bench's parent↔worker contract: the reference's name, the files they exchange, the worker's argv."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REFERENCE = "transformers"  # the contender every other one is compared with


# A contender's extras after its precision, each setting the worker's environment: torch-cuda's compilation and
# JPEG decoding; ONNX Runtime's intra-op threads and spinning (backends/onnxruntime_cpu: THREADS_ENV, SPIN_ENV).
EXTRAS = {"eager": {"SEGDEMO_TORCH_COMPILE": "0"}, "compile": {"SEGDEMO_TORCH_COMPILE": "1"},
          "pillow": {"SEGDEMO_GPU_DECODE": "0"}, "spin": {"SEGDEMO_ORT_SPIN": "1"}, "nospin": {"SEGDEMO_ORT_SPIN": "0"}}
THREADS = re.compile(r"threads(\d+)")  # 'threadsN': N intra-op threads


def variant(precision: str) -> tuple[str, dict[str, str]]:
    """'fp16+eager' → ('fp16', environment that turns torch.compile off for torch-cuda); '+compile' forces it on,
    '+pillow' decodes JPEGs with Pillow on the host instead of nvJPEG; 'int8+threads1+nospin': one ONNX Runtime
    thread that does not spin ('threadsN': N threads) (several extras combine)."""
    precision, *extras = precision.split("+")
    env: dict[str, str] = {}
    for extra in extras:
        if threads := THREADS.fullmatch(extra):
            env["SEGDEMO_ORT_THREADS"] = threads.group(1)
        elif extra in EXTRAS:
            env.update(EXTRAS[extra])
        else:
            raise ValueError(f"unknown contender extra '+{extra}': one of {', '.join(EXTRAS)} or threadsN")
    return precision, env


def job_file(work: Path) -> Path:
    """The settings every contender shares (model, images, iterations), written once by the parent."""
    return work / "job.json"


def result_file(work: Path, backend: str, precision: str) -> Path:
    """A contender's numbers, written by its worker: its presence means the worker finished."""
    return work / f"result-{backend}-{precision}.json"


def maps_file(work: Path, backend: str, precision: str) -> Path:
    """A contender's class maps, written by its worker and compared by the parent."""
    return work / f"maps-{backend}-{precision}.npz"


def worker_argv(backend: str, precision: str, work: Path) -> list[str]:
    """The command line of one contender's worker process."""
    return [sys.executable, "-m", "segdemo.bench.worker", "--backend", backend, "--precision", precision,
            "--job", str(job_file(work))]
