"""`segdemo bench`: the transformers pipeline against every segdemo backend, in one run, on the same images.

Each contender runs in a fresh worker process, so cold start, peak host memory and peak device memory are its own.
The parent prepares the images (JPEG bytes, as an upload arrives), compares every class map with the transformers
pipeline's, and writes results.json, a Markdown table (optionally into a section of docs/benchmarks.md) and a
Plotly chart. Warm-ups are excluded from every timing; latencies are medians (p50) and p95 of `--iters` runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .cli import MODEL_HELP, command
from .errors import SegdemoError

log = logging.getLogger("segdemo")

REFERENCE = "transformers"
CPU_BACKENDS = {"onnxruntime"}  # every other backend runs on the GPU
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
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
    return f"{size[0]}x{size[1]}"


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:b4", help=MODEL_HELP.replace("default", "bench default random:b4; "
                                                                            "segdemo default"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the transformers pipeline runs; backends of that device are compared (default cpu)")
    p.add_argument("--sizes", default="512x512,1024x768", help="image sizes WIDTHxHEIGHT, comma separated")
    p.add_argument("--iters", type=int, default=20, help="timed requests per size and contender (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests per size before timing (default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent requests for the throughput figure")
    p.add_argument("--images", type=int, default=3, help="distinct photos per size, cycled (default 3)")
    p.add_argument("--backends", default="available",
                   help="'available' (every usable backend of --device) or a list such as "
                        "torch-cuda,torch-cuda:fp16+eager,torch-cuda:fp32")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for results.json, bench.md, bench.html")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write the results into this Markdown file, replacing its --section only")
    p.add_argument("--section", default=None, help="section name inside --markdown (default: the device)")
    p.add_argument("--build-dir", type=Path, default=None, help="artifact cache folder (default build/)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="render an earlier results.json (with --app: results-app.json) instead of running")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CI run (random:tiny, one 64x48 image, 3 iterations; with --app: one 512x512 image, "
                        "2 iterations, the browser only where Chromium is)")
    app = p.add_argument_group("--app: what a user of the web app waits for (API round trip, browser paint), "
                               "against a do-nothing Gradio app; also uses --model, --iters, --warmup, --out, "
                               "--markdown, --section (default app-cpu/app-cuda), --build-dir, --smoke")
    app.add_argument("--app", action="store_true",
                     help="time `python app.py` as its users wait for it instead of the backends "
                          "(writes results-app.json, bench-app.md)")
    app.add_argument("--backend", default="auto", help="--app: the app's --backend (default auto)")
    app.add_argument("--app-images", default="512,1024x768,1920x1080,phone12mp,png-screenshot",
                     help="--app: images for the API timing, from 512, 1024x768, 1920x1080, phone12mp "
                          "(4032x3024 JPEG, EXIF rotated), png-screenshot (default all five)")
    app.add_argument("--browser", action=argparse.BooleanOptionalAction, default=True,
                     help="--app: also time click → painted in Chromium through Playwright (default on; "
                          "skipped with a reason when Chromium or Playwright is missing)")
    app.add_argument("--browser-images", default="1024x768", help="--app: images for the browser timing "
                                                                 "(same names as --app-images; default 1024x768)")
    app.add_argument("--browser-iters", type=int, default=None,
                     help="--app: timed clicks per image and page state (default: --iters)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)


@command("bench", "time the transformers pipeline against each segdemo backend (JSON, Markdown, Plotly); "
                  "--app: the web app as its users wait for it", _args)
def _bench(args: argparse.Namespace) -> int:
    if args.app:
        from .bench_app import run_app_bench  # imported here only: library code never loads the app benchmark

        return run_app_bench(args)
    if args.worker:
        _worker(args.worker, json.loads(args.job.read_text()))
        return 0
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        if args.smoke:
            for key, value in SMOKE.items():
                setattr(args, key, value)
        results = run_bench(args)
    files = write_outputs(results, args.out, args.markdown, args.section)
    for name, path in files.items():
        print(f"{name:9s} {path}")
    print(markdown_table(results))
    return 0


# ----------------------------------------------------------------------------------------------------- parent


def contenders(device: str, requested: str) -> list[tuple[str, str]]:
    """(backend, precision) pairs to time: fp16 on the GPU, fp32 on the CPU unless a name says `:fp32`/`:fp16`."""
    from . import backends

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


def _variant(precision: str) -> tuple[str, dict[str, str]]:
    """'fp16+eager' → ('fp16', environment that turns torch.compile off for torch-cuda); '+compile' forces it on,
    '+pillow' decodes JPEGs with Pillow on the host instead of nvJPEG."""
    precision, _, extra = precision.partition("+")
    env = {"eager": {"SEGDEMO_TORCH_COMPILE": "0"}, "compile": {"SEGDEMO_TORCH_COMPILE": "1"},
           "pillow": {"SEGDEMO_GPU_DECODE": "0"}}.get(extra, {})
    return precision, env


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare images and artifacts, run every contender in its own process, compare class maps."""
    from .export import ensure_onnx
    from .model_source import resolve

    sizes = parse_sizes(args.sizes)
    if args.device == "cuda":
        from .backends.torch_cuda import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise SegdemoError(f"--device cuda: {reason} — run with --device cpu")
    pairs = contenders(args.device, args.backends)
    source = resolve(args.model)
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
            "build_dir": str(args.build_dir) if args.build_dir else None, "maps_dir": str(work),
        }
        runs = [_run_worker(REFERENCE, "fp32", job, work)]
        runs += [_run_worker(backend, precision, job, work) for backend, precision in pairs]
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
            image = Image.fromarray(_photo(PHOTOS[k % len(PHOTOS)])).resize(size, Image.Resampling.BICUBIC)
            path = folder / f"{size_key(size)}_{k}.jpg"
            image.save(path, quality=90)
            out[size_key(size)].append(str(path))
    return out


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()  # PHOTOS are RGB


def _job_file(work: Path, backend: str, precision: str) -> Path:
    return work / f"job-{backend}-{precision}.json"


def _maps_file(work: Path, backend: str, precision: str) -> Path:
    """A contender's class maps, written by its worker and compared by the parent."""
    return work / f"maps-{backend}-{precision}.npz"


def _run_worker(backend: str, precision: str, job: dict, work: Path) -> dict[str, Any]:
    """One contender in a fresh interpreter; its JSON comes back on a file, its log goes to ours on failure."""
    label = backend if backend == REFERENCE else f"{backend} ({precision.replace('+', ', ')})"
    job_file = _job_file(work, backend, precision)
    job_file.write_text(json.dumps({**job, "backend": backend, "precision": precision}))
    env = {**os.environ, **_variant(precision)[1]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    log.info("bench: %s …", label)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--worker", backend, "--job", str(job_file)],
        capture_output=True, text=True, env=env,
    )
    result_file = job_file.with_suffix(".result.json")
    if proc.returncode != 0 or not result_file.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        log.error("bench: %s failed (exit %s):\n%s", label, proc.returncode, tail)
        return {"backend": backend, "precision": precision, "label": label, "error": tail.splitlines()[-1:] or [""]}
    result = json.loads(result_file.read_text())
    if result.get("compiled") and "compile" not in label:
        label = label[:-1] + ", torch.compile)"
    if (result.get("decoder") or "").startswith("nvJPEG"):
        label = label[:-1] + ", nvJPEG decode)"
    log.info("bench: %s done in %.0f s", label, time.perf_counter() - start)
    return {**result, "label": label}


def _add_agreement(runs: list[dict], work: Path, images: dict[str, list[str]]) -> None:
    """Share of pixels where each contender's class map equals the transformers pipeline's, per size."""
    reference_file = _maps_file(work, REFERENCE, "fp32")
    if not reference_file.is_file():
        return
    reference = np.load(reference_file)
    for run in runs:
        maps_file = _maps_file(work, run["backend"], run["precision"])
        if "error" in run or not maps_file.is_file():
            continue
        maps = np.load(maps_file)
        for key in images:
            same = total = 0
            for k in range(len(images[key])):
                a, b = maps[f"{key}_{k}"], reference[f"{key}_{k}"]
                same += int((a == b).sum()) if a.shape == b.shape else 0
                total += b.size
            run["sizes"][key]["agreement"] = same / total


def _meta(args: argparse.Namespace, runs: list[dict], onnx_file: Path,
          sizes: list[tuple[int, int]]) -> dict[str, Any]:
    facts = next((r["facts"] for r in runs if "facts" in r), {})
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model,
        "device": args.device,
        "sizes": [size_key(s) for s in sizes],
        "iters": args.iters, "warmup": args.warmup, "concurrency": args.concurrency, "images": args.images,
        "onnx_file": onnx_file.name,
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "gpu": facts.get("gpu"),
        },
        "versions": {"python": platform.python_version(), **facts.get("versions", {})},
        "command": "python -m segdemo bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------------------- worker


def _percentiles(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean()), "n": int(values.size)}


class _Reference:
    """The transformers pipeline wearing the same three calls as a segdemo session."""

    def __init__(self, model: str, device: str) -> None:
        from .labels import palette
        from .model_source import resolve
        from .reference import TransformersPipeline

        source = resolve(model)
        self.pipe = TransformersPipeline(source, device)
        self.colours = palette(len(source.labels))

    def request(self, data: bytes) -> np.ndarray:
        """Decode → class map + overlay, as the user-written pipeline would serve it."""
        from .decode import decode
        from .visuals import colour_mask, overlay

        rgb = decode(data)
        class_map = self.pipe(rgb)
        overlay(rgb, colour_mask(class_map, self.colours))
        return class_map

    def prepare(self, data: bytes) -> Any:
        from PIL import Image

        from .decode import decode

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

    def __init__(self, model: str, backend: str, precision: str, build: str | None) -> None:
        from .pipeline import Session

        self.session = Session(model, backend, precision, Path(build) if build else None)
        self.last_spans: list[dict[str, float]] = []
        self.recording = False

    def request(self, data: bytes) -> np.ndarray:
        result = self.session.segment(data)
        result.display_overlay()  # what the app shows (the image itself up to the display side)
        if self.recording:
            self.last_spans.append(result.spans.durations_ms())
        return result.class_map

    def prepare(self, data: bytes) -> Any:
        from .decode import decode
        from .preprocess import prepare

        return prepare(decode(data), self.session.source.input_size, self.session.max_side)

    def model_only(self, prepared: Any) -> None:
        from .spans import SpanRecorder

        self.session.backend.run(prepared, SpanRecorder())

    def stages(self) -> dict[str, float]:
        """Median ms of each named span over the timed requests: where the end-to-end time goes."""
        names = {name for spans in self.last_spans for name in spans}
        medians = {name: float(np.median([s.get(name, 0.0) for s in self.last_spans])) for name in sorted(names)}
        self.last_spans.clear()
        return medians


def _worker(backend: str, job: dict) -> None:
    """Time one contender on every size; write its numbers and class maps next to the job file."""
    from .pipeline import peak_rss_mb

    device = job["device"]
    torch = _torch_if(device)
    start = time.perf_counter()
    first = Path(next(iter(job["images"].values()))[0]).read_bytes()
    if backend == REFERENCE:
        runner: Any = _Reference(job["model"], device)
    else:
        runner = _Segdemo(job["model"], backend, _variant(job["precision"])[0], job["build_dir"])
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
            "e2e_ms": _percentiles(e2e), "model_ms": _percentiles(model_ms),
            "throughput_ips": requests / wall, "concurrency": concurrency, "stages_ms": stages,
        }
    peak_host = peak_rss_mb()
    result = {
        "backend": backend, "precision": job["precision"] if backend != REFERENCE else "fp32",
        "device": device if backend == REFERENCE else runner.session.backend.device,
        "cold_start_ms": cold_start_ms, "peak_host_mb": peak_host,
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if torch is not None else None,
        "sizes": sizes, "facts": _facts(torch),
    }
    if backend != REFERENCE:
        result["compiled"] = getattr(runner.session.backend, "compiled", None)
        result["decoder"] = getattr(runner.session.backend, "decoder_name", None)
        result["decode_difference"] = getattr(runner.session.backend, "decode_difference", None)
        result["load_spans_ms"] = {k: round(v, 2) for k, v in runner.session.load_spans.durations_ms().items()}
    work = Path(job["maps_dir"])
    np.savez_compressed(_maps_file(work, backend, job["precision"]), **maps)
    job_file = _job_file(work, backend, job["precision"])
    job_file.with_suffix(".result.json").write_text(json.dumps(result, indent=1))


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
    from .gpu import package_versions

    versions = package_versions(("torch", "transformers", "onnxruntime", "onnx", "numpy", "pillow"))
    gpu = None
    if torch is not None:
        gpu = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, driver-visible memory " \
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return {"versions": versions, "gpu": gpu}


# ----------------------------------------------------------------------------------------------------- outputs


def write_outputs(results: dict, out: Path, markdown: Path | None, section: str | None) -> dict[str, Path]:
    """results.json, bench.md and bench.html in `out`; optionally the section of a shared Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "bench.md"}
    files["json"].write_text(json.dumps(results, indent=1) + "\n")
    text = markdown_section(results)
    files["markdown"].write_text(text)
    html = chart_html(results)
    if html is not None:
        files["chart"] = out / "bench.html"
        files["chart"].write_text(html)
    if markdown is not None:
        merge_section(markdown, section or results["meta"]["device"], text)
        files["docs"] = markdown
    return files


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown_table(results: dict) -> str:
    """One row per contender and size; the speed-up is the transformers pipeline's e2e p50 over this one's."""
    head = ("| contender | size | e2e p50 ms | e2e p95 ms | model-only p50 ms | throughput img/s (N) | "
            "cold start s | peak host MB | peak device MB | agreement | e2e speed-up | model-only speed-up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    reference = next((r for r in results["runs"] if r["backend"] == REFERENCE and "error" not in r), None)
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"| {run['label']} | – | failed: {' '.join(run['error'])[:80]} |" + " |" * 9)
            continue
        for key, s in run["sizes"].items():
            base = reference["sizes"].get(key) if reference else None
            speedup = base["e2e_ms"]["p50"] / s["e2e_ms"]["p50"] if base else None
            model_speedup = base["model_ms"]["p50"] / s["model_ms"]["p50"] if base else None
            agreement = s.get("agreement")
            device_mb = run.get("peak_device_mb")
            lines.append(
                f"| {run['label']} | {key} | {_ms(s['e2e_ms']['p50'])} | {_ms(s['e2e_ms']['p95'])} | "
                f"{_ms(s['model_ms']['p50'])} | {s['throughput_ips']:.2f} ({s['concurrency']}) | "
                f"{run['cold_start_ms'] / 1e3:.2f} | {run['peak_host_mb']:.0f} | "
                f"{'–' if device_mb is None else f'{device_mb:.0f}'} | "
                f"{'reference' if run is reference else ('–' if agreement is None else f'{agreement:.4%}')} | "
                f"{'1×' if run is reference else ('–' if speedup is None else f'{speedup:.2f}×')} | "
                f"{'1×' if run is reference else ('–' if model_speedup is None else f'{model_speedup:.2f}×')} |"
            )
    return "\n".join(lines) + "\n"


def markdown_section(results: dict) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    hardware = machine["gpu"] or f"{machine['cpu']}, {machine['cores']} cores"
    lines = [
        f"### {meta['model']} on {meta['device']} — {hardware}",
        "",
        f"- date: {meta['date']}; machine: {machine['platform']}; CPU: {machine['cpu']} ({machine['cores']} cores)",
        f"- versions: {versions}",
        f"- {meta['iters']} timed requests per size after {meta['warmup']} warm-ups, {meta['images']} JPEG photos "
        f"cycled; throughput with {meta['concurrency']} concurrent requests; graph `{meta['onnx_file']}`",
        f"- command: `{meta['command']}`",
        "",
        markdown_table(results),
    ]
    stages = [(r["label"], key, s["stages_ms"]) for r in results["runs"] if "error" not in r
              for key, s in r["sizes"].items() if s.get("stages_ms")]
    if stages:
        lines += ["Where the end-to-end time goes (median ms per span):", ""]
        for label, key, spans in stages:
            top = sorted(spans.items(), key=lambda kv: -kv[1])
            lines.append(f"- {label} {key}: " + ", ".join(f"{n} {_ms(v)}" for n, v in top[:9]))
        lines.append("")
    return "\n".join(lines)


def merge_section(path: Path, section: str, text: str) -> None:
    """Replace (or append) the block between this section's markers, keeping every other section."""
    begin, end = f"<!-- segdemo-bench:{section} -->", f"<!-- /segdemo-bench:{section} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if path.is_file():
        current = path.read_text()
    else:
        current = ("# Benchmarks\n\nGenerated by `python -m segdemo bench` (one section per run; re-run the "
                   "command shown in a section to refresh it, or re-render its results.json with `--from-json`). "
                   "Speed-ups are the transformers pipeline's p50 over the contender's, from the same run.\n\n")
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current)


def chart_html(results: dict) -> str | None:
    """Grouped bars of e2e and model-only p50 per size and contender; None without plotly."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        log.warning("plotly is not installed: no chart (pip install plotly)")
        return None
    runs = [r for r in results["runs"] if "error" not in r]
    sizes = results["meta"]["sizes"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("end-to-end p50 (ms)", "model-only p50 (ms)"))
    for run in runs:
        for col, metric in ((1, "e2e_ms"), (2, "model_ms")):
            values = [run["sizes"].get(k, {}).get(metric, {}).get("p50") for k in sizes]
            fig.add_trace(go.Bar(name=run["label"], x=sizes, y=values, legendgroup=run["label"],
                                 showlegend=col == 1, text=[_ms(v) for v in values]), row=1, col=col)
    meta = results["meta"]
    hardware = meta["machine"]["gpu"] or meta["machine"]["cpu"]
    fig.update_layout(barmode="group", title=f"segdemo bench — {meta['model']} on {meta['device']} ({hardware}), "
                                             f"{meta['date']}")
    fig.update_yaxes(type="log")
    buffer = io.StringIO()
    fig.write_html(buffer, include_plotlyjs="cdn", full_html=True)
    return buffer.getvalue()
