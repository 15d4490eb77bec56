"""One contender of the engine bench, in its own process: `python -m segdemo.bench.worker --backend NAME
--precision P --job FILE` times every size of the job and writes its numbers and class maps next to the job file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegdemoError
from .jobs import REFERENCE, maps_file, result_file, variant
from .report import percentiles


class _Reference:
    """The transformers pipeline wearing the same three calls as a segdemo session."""

    def __init__(self, model: str, device: str) -> None:
        from ..model.labels import palette
        from ..model.reference import TransformersPipeline
        from ..model.source import resolve

        source = resolve(model)
        self.pipe = TransformersPipeline(source, device)
        self.colours = palette(source.labels)

    def request(self, data: bytes) -> np.ndarray:
        """Decode → class map + overlay, as the user-written pipeline would serve it."""
        from ..image.decode import decode
        from ..image.visuals import colour_mask, overlay

        rgb = decode(data)
        class_map = self.pipe(rgb)
        overlay(rgb, colour_mask(class_map, self.colours))
        return class_map

    def prepare(self, data: bytes) -> Any:
        from PIL import Image

        from ..image.decode import decode

        rgb = decode(data)
        inputs = self.pipe.processor(images=Image.fromarray(rgb), return_tensors="pt").to(self.pipe.device)
        return inputs, rgb.shape[:2]

    def model_only(self, prepared: Any) -> None:
        inputs, size = prepared
        with self.pipe.torch.inference_mode():
            outputs = self.pipe.model(**inputs)
            (seg,) = self.pipe.processor.post_process_semantic_segmentation(outputs, target_sizes=[size])
            seg.cpu()

    recording = False

    def stages(self) -> dict[str, float]:
        return {}


class _Segdemo:
    """A segdemo Session: request = segment + display overlay; model-only = the backend's run on a prepared input."""

    def __init__(self, model: str, backend: str, precision: str, build_dir: str | None) -> None:
        from ..pipeline import Session

        self.session = Session(model, backend, precision, Path(build_dir) if build_dir else None, warm_up="now")
        self.session.settle(timeout=600)  # background compilations would slow the timed requests
        self.last_spans: list[dict[str, float]] = []
        self.recording = False

    def request(self, data: bytes) -> np.ndarray:
        result = self.session.segment(data)
        result.display_overlay()  # what the app shows (the image itself up to the display side)
        if self.recording:
            self.last_spans.append(result.spans.durations_ms())
        return result.class_map

    def prepare(self, data: bytes) -> Any:
        from ..image.decode import decode
        from ..image.preprocess import prepare

        return prepare(decode(data), self.session.source.input_size, self.session.max_side)

    def model_only(self, prepared: Any) -> None:
        from ..profiling.spans import SpanRecorder

        self.session.backend.run(prepared, SpanRecorder())

    def stages(self) -> dict[str, float]:
        """Median ms of each named span over the timed requests: where the end-to-end time goes."""
        names = {name for spans in self.last_spans for name in spans}
        medians = {name: float(np.median([s.get(name, 0.0) for s in self.last_spans])) for name in sorted(names)}
        self.last_spans.clear()
        return medians


def run_contender(backend: str, precision: str, job: dict[str, Any]) -> None:
    """Time one contender on every size; write its numbers and class maps into the job's work folder."""
    from ..pipeline import peak_rss_mb

    device = job["device"]
    torch = _torch_if(device)
    start = time.perf_counter()
    first = Path(next(iter(job["images"].values()))[0]).read_bytes()
    if backend == REFERENCE:
        runner: Any = _Reference(job["model"], device)
    else:
        runner = _Segdemo(job["model"], backend, variant(precision)[0], job["build_dir"])
    runner.request(first)
    _sync(torch)
    cold_start_ms = (time.perf_counter() - start) * 1e3
    sizes: dict[str, Any] = {}
    maps: dict[str, np.ndarray] = {}
    for key, paths in job["images"].items():
        datas = [Path(p).read_bytes() for p in paths]
        for i in range(job["warmup"]):
            runner.request(datas[i % len(datas)])
        runner.recording = True  # stage spans come from the sequential timed requests only
        e2e = []
        for i in range(job["iters"]):
            t = time.perf_counter()
            class_map = runner.request(datas[i % len(datas)])
            e2e.append((time.perf_counter() - t) * 1e3)
            if i < len(datas):
                maps[f"{key}_{i}"] = class_map
        stages = runner.stages()
        runner.recording = False
        for k, data in enumerate(datas):  # fewer iterations than images: still compare every image
            if f"{key}_{k}" not in maps:
                maps[f"{key}_{k}"] = runner.request(data)
        prepared = [runner.prepare(d) for d in datas]
        model_ms = []
        for i in range(job["iters"]):
            t = time.perf_counter()
            runner.model_only(prepared[i % len(prepared)])
            _sync(torch)
            model_ms.append((time.perf_counter() - t) * 1e3)
        concurrency = job["concurrency"]
        requests = max(job["iters"], 2 * concurrency)
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench") as pool:
            list(pool.map(runner.request, [datas[i % len(datas)] for i in range(requests)]))
        wall = time.perf_counter() - t
        sizes[key] = {
            "e2e_ms": percentiles(e2e), "model_ms": percentiles(model_ms),
            "throughput_ips": requests / wall, "concurrency": concurrency, "stages_ms": stages,
        }
    peak_host = peak_rss_mb()
    result = {
        "backend": backend, "precision": precision if backend != REFERENCE else "fp32",
        "device": device if backend == REFERENCE else runner.session.backend.device,
        "cold_start_ms": cold_start_ms, "peak_host_mb": peak_host,
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if torch is not None else None,
        "sizes": sizes, "facts": _facts(torch),
    }
    if backend != REFERENCE:
        from ..backends.torch_cuda import TorchCudaBackend

        backend_obj = runner.session.backend
        if isinstance(backend_obj, TorchCudaBackend):  # the facts its label is made of
            result["compiled"] = backend_obj.compiled
            result["decoder"] = backend_obj.decoder_name
            result["decode_difference"] = (backend_obj.jpeg_decoder.difference
                                           if backend_obj.jpeg_decoder is not None else None)
        result["load_spans_ms"] = {k: round(v, 2) for k, v in runner.session.load_spans.durations_ms().items()}
    work = Path(job["work"])
    # numpy's stub lets **kwds reach allow_pickle (a bool); the keys here are array names
    np.savez_compressed(maps_file(work, backend, precision), **maps)  # type: ignore[arg-type]
    result_file(work, backend, precision).write_text(json.dumps(result, indent=1))


def _torch_if(device: str) -> Any:
    if device != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        raise SegdemoError("--device cuda, but torch sees no CUDA device")
    return torch


def _sync(torch: Any) -> None:
    if torch is not None:
        torch.cuda.synchronize()


def _facts(torch: Any) -> dict[str, Any]:
    from ..gpu import package_versions

    versions = package_versions(("torch", "transformers", "onnxruntime", "onnx", "numpy", "pillow"))
    gpu = None
    if torch is not None:
        gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, driver-visible memory " \
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return {"versions": versions, "gpu": gpu}


def main(argv: list[str] | None = None) -> int:
    """Run one contender; a SegdemoError is one line on stderr and exit code 2 (the parent shows the log's tail)."""
    p = argparse.ArgumentParser(prog="python -m segdemo.bench.worker", description=__doc__)
    p.add_argument("--backend", required=True, help=f"'{REFERENCE}' or a segdemo backend name")
    p.add_argument("--precision", required=True, help="fp32, fp16, optionally +eager, +compile or +pillow")
    p.add_argument("--job", type=Path, required=True, help="the job file the parent wrote")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):  # as `python -m segdemo` logs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run_contender(args.backend, args.precision, json.loads(args.job.read_text()))
    except SegdemoError as exc:
        print(f"segdemo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
