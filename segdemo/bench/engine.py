"""The engine bench: the transformers pipeline and every segdemo backend on the same JPEGs, each contender in a fresh
`worker` process (so cold start and peak memory are its own), every class map compared with the pipeline's."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegdemoError
from .facts import cpu_name
from .images import PHOTOS, photo
from .jobs import REFERENCE, job_file, maps_file, result_file, variant, worker_argv

log = logging.getLogger("segdemo")

ROOT = Path(__file__).resolve().parents[2]  # the repository: workers import segdemo from here, wherever cwd is
CPU_BACKENDS = {"onnxruntime"}  # every other backend runs on the GPU
SMOKE = dict(model="random:tiny", sizes="64x48", iters=3, warmup=1, concurrency=2, images=1)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'1024x768,512x512' (width×height, as image sizes are usually written) → [(width, height), …]."""
    sizes = []
    for part in text.split(","):
        try:
            width, height = (int(v) for v in part.lower().replace("×", "x").split("x"))
        except ValueError:
            raise SegdemoError(f"--sizes wants WIDTHxHEIGHT[,…], got '{part}'") from None
        if width < 1 or height < 1:
            raise SegdemoError(f"--sizes: {part} has no pixels")
        sizes.append((width, height))
    return sizes


def size_key(size: tuple[int, int]) -> str:
    """(width, height) → 'WIDTHxHEIGHT', the key of a size in the results."""
    return f"{size[0]}x{size[1]}"


def contenders(device: str, requested: str) -> list[tuple[str, str]]:
    """(backend, precision) pairs to time: fp16 on the GPU, fp32 on the CPU unless a name says `:fp32`/`:fp16`."""
    from .. import backends

    if requested == "available":
        names = [r.name for r in backends.ladder() if r.available and (r.name in CPU_BACKENDS) == (device == "cpu")]
    else:
        names = [n.strip() for n in requested.split(",") if n.strip()]
    pairs = []
    for name in names:
        backend, _, precision = name.partition(":")
        if requested != "available":  # unknown or unusable names fail here, before any work
            rung = backends.probe(backend)
            if not rung.available:
                raise SegdemoError(f"backend '{backend}' cannot run here: {rung.reason}")
        pairs.append((backend, precision or ("fp32" if backend in CPU_BACKENDS else "fp16")))
    return pairs


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare images and artifacts, run every contender in its own process, compare class maps."""
    from ..graph.export import ensure_onnx
    from ..model.source import resolve

    sizes = parse_sizes(args.sizes)
    if args.device == "cuda":
        from ..backends.torch_cuda import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise SegdemoError(f"--device cuda: {reason} — run with --device cpu")
    pairs = contenders(args.device, args.backends)
    source = resolve(args.model, args.build_dir)
    start = time.perf_counter()
    onnx_file, hit = ensure_onnx(source, args.build_dir)  # cold starts below are from cached artifacts
    log.info("fused graph %s (%s, %.1f s)", onnx_file.name, "cached" if hit else "exported",
             time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="segdemo-bench-") as tmp:
        work = Path(tmp)
        images = _write_images(work, sizes, args.images)
        job = {
            "model": args.model, "device": args.device, "images": images, "iters": args.iters,
            "warmup": args.warmup, "concurrency": args.concurrency,
            "build_dir": str(args.build_dir) if args.build_dir else None, "work": str(work),
        }
        job_file(work).write_text(json.dumps(job))
        runs = [_run_worker(REFERENCE, "fp32", work)] if args.reference else []
        runs += [_run_worker(backend, precision, work) for backend, precision in pairs]
        _add_agreement(runs, work, images)
    return {
        "meta": _meta(args, runs, onnx_file, sizes),
        "runs": runs,
    }


def _write_images(folder: Path, sizes: list[tuple[int, int]], count: int) -> dict[str, list[str]]:
    """JPEG files of real photos at each size (quality 90), as a user would upload them."""
    from PIL import Image

    out: dict[str, list[str]] = {}
    for size in sizes:
        out[size_key(size)] = []
        for k in range(count):
            image = Image.fromarray(photo(PHOTOS[k % len(PHOTOS)])).resize(size, Image.Resampling.BICUBIC)
            path = folder / f"{size_key(size)}_{k}.jpg"
            image.save(path, quality=90)
            out[size_key(size)].append(str(path))
    return out


def _run_worker(backend: str, precision: str, work: Path) -> dict[str, Any]:
    """One contender in a fresh interpreter; its JSON comes back on a file, its log goes to ours on failure."""
    label = backend if backend == REFERENCE else f"{backend} ({precision.replace('+', ', ')})"
    env = {**os.environ, **variant(precision)[1]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log.info("bench: %s …", label)
    start = time.perf_counter()
    proc = subprocess.run(worker_argv(backend, precision, work), capture_output=True, text=True, env=env)
    result_path = result_file(work, backend, precision)
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        log.error("bench: %s failed (exit %s):\n%s", label, proc.returncode, tail)
        return {"backend": backend, "precision": precision, "label": label, "error": tail.splitlines()[-1:] or [""]}
    result = json.loads(result_path.read_text())
    if result.get("compiled") and "compile" not in label:
        label = label[:-1] + ", torch.compile)"
    if (result.get("decoder") or "").startswith("nvJPEG"):
        label = label[:-1] + ", nvJPEG decode)"
    log.info("bench: %s done in %.0f s", label, time.perf_counter() - start)
    return {**result, "label": label}


def _add_agreement(runs: list[dict], work: Path, images: dict[str, list[str]]) -> None:
    """Share of pixels where each contender's class map equals the transformers pipeline's, per size."""
    reference_file = maps_file(work, REFERENCE, "fp32")
    if not reference_file.is_file():
        return
    reference = np.load(reference_file)
    for run in runs:
        run_maps = maps_file(work, run["backend"], run["precision"])
        if "error" in run or not run_maps.is_file():
            continue
        maps = np.load(run_maps)
        for key in images:
            same = total = 0
            for k in range(len(images[key])):
                a, b = maps[f"{key}_{k}"], reference[f"{key}_{k}"]
                same += int((a == b).sum()) if a.shape == b.shape else 0
                total += b.size
            run["sizes"][key]["agreement"] = same / total


def _meta(args: argparse.Namespace, runs: list[dict], onnx_file: Path,
          sizes: list[tuple[int, int]]) -> dict[str, Any]:
    facts: dict[str, Any] = next((r["facts"] for r in runs if "facts" in r), {})
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model,
        "device": args.device,
        "sizes": [size_key(s) for s in sizes],
        "iters": args.iters, "warmup": args.warmup, "concurrency": args.concurrency, "images": args.images,
        "onnx_file": onnx_file.name,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "gpu": facts.get("gpu"),
        },
        "versions": {"python": platform.python_version(), **facts.get("versions", {})},
        "command": "python -m segdemo bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
