"""`segdemo bench --load`: many users at once — N concurrent clients × M requests against the session in this
process and against the real app through gradio_client, each without and with batching in the same run.

Every image of the set has a size of its own, so an answer carries its image's identity: each is checked to have
its own image's size and to agree with that image's unbatched class map (≥ AGREEMENT: identical on the CPU;
fp16 kernels picked per batch size may round differently on a GPU). Throughput, p50/p95/p99 and failures per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..spans import percentile

log = logging.getLogger(__name__)

AGREEMENT = 0.99
SIDES = ((512, 512), (512, 496), (496, 512), (480, 512), (512, 480), (464, 512), (512, 464), (448, 512))


def make_set(folder: Path) -> list[tuple[Path, tuple[int, int]]]:
    """JPEG files of distinct sizes near 512² (scikit-image photos), with their (height, width)."""
    from PIL import Image

    from .images import PHOTOS, photo

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (height, width) in enumerate(SIDES):
        path = folder / f"load-{i}-{width}x{height}.jpg"
        Image.fromarray(photo(PHOTOS[i % len(PHOTOS)])).resize((width, height)).save(path, quality=90)
        out.append((path, (height, width)))
    return out


def _drive(clients: int, requests: int, call, check) -> dict[str, Any]:
    """`clients` threads × `requests` calls of call(index) → answer; check(index, answer) → None or why it is wrong."""
    latencies, failures, wrong = [], [], []
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(requests):
            index = (c + k) % len(SIDES)
            start = time.perf_counter()
            try:
                answer = call(index)
            except Exception as exc:  # noqa: BLE001 — counted and reported, the run goes on
                with lock:
                    failures.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            why = check(index, answer)
            with lock:
                latencies.append(elapsed)
                if why:
                    wrong.append(why)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    done = len(latencies)
    return {"clients": clients, "requests": clients * requests, "answered": done, "failures": len(failures),
            "failure_examples": failures[:3], "wrong_answers": len(wrong), "wrong_examples": wrong[:3],
            "wall_s": round(wall, 2), "throughput_per_s": round(done / wall, 1) if wall else 0.0,
            **{f"p{q}_ms": round(percentile(latencies, q), 1) if latencies else None for q in (50, 95, 99)}}


def _checker(expected: list[np.ndarray]):
    def check(index: int, class_map: np.ndarray) -> str | None:
        if class_map.shape != expected[index].shape:
            return f"image {index}: answer of size {class_map.shape}, its image is {expected[index].shape}"
        agreement = float((class_map == expected[index]).mean())
        return None if agreement >= AGREEMENT else f"image {index}: {agreement:.4f} agreement with its own map"
    return check


def session_load(args: argparse.Namespace, images: list[tuple[Path, tuple[int, int]]],
                 max_batch: int) -> dict[str, Any]:
    """The load against a Session in this process."""
    from ..pipeline import Session

    with Session(args.model, args.backend, args.precision, args.build_dir, warm_up="now",
                 max_batch=max_batch) as session:
        session.settle(timeout=600)
        expected = [session.segment(str(path)).class_map for path, _ in images]  # one at a time
        for _ in range(args.warmup):
            _drive(args.clients, 1, lambda i: session.segment(str(images[i][0])).class_map, lambda i, a: None)
        run = _drive(args.clients, args.requests, lambda i: session.segment(str(images[i][0])).class_map,
                     _checker(expected))
        run["batches"] = _batch_sizes(session)
        run.update(backend=session.backend.name, precision=session.backend.precision)
    return run


def _batch_sizes(session: Any) -> dict[str, float]:
    sizes = [s.attrs["size"] for r in session.history.recent() for s in r.spans if s.name == "batch"]
    return {"mean": round(float(np.mean(sizes)), 2), "max": int(max(sizes))} if sizes else {"mean": 1.0, "max": 1}


def app_load(args: argparse.Namespace, images: list[tuple[Path, tuple[int, int]]], max_batch: int,
             work: Path) -> dict[str, Any]:
    """The load against the real app (`python app.py`) through one gradio_client Client per client thread."""
    import sys

    from gradio_client import Client, handle_file

    from ..visuals import read_class_map
    from .app import Server

    def argv(port: int) -> list[str]:
        return [sys.executable, "app.py", "--model", args.model, "--backend", args.backend, "--port", str(port),
                "--max-batch", str(max_batch)] + (["--build-dir", str(args.build_dir)] if args.build_dir else [])

    with Server(f"app-batch{max_batch}", argv, work, args.out) as server:
        server.ready(str(images[0][0]), (0.5, False), work / "downloads")
        server.settle(args.backend)
        local = threading.local()

        def call(index: int) -> np.ndarray:
            if not hasattr(local, "client"):
                local.client = Client(server.url, verbose=False, download_files=str(work / "downloads"),
                                      analytics_enabled=False)
            result = local.client.predict(handle_file(str(images[index][0])), 0.5, False, api_name="/segment")
            return read_class_map(result[1])

        expected = [call(i) for i in range(len(images))]
        _drive(args.clients, max(1, args.warmup), call, lambda i, a: None)
        run = _drive(args.clients, args.requests, call, _checker(expected))
    run["ready_s"] = round(server.ready_s, 1)
    return run


def run_load_bench(args: argparse.Namespace) -> int:
    """Session and app, unbatched then batched, same images, same run; prints a table, writes load.json."""
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segdemo-load-") as folder:
        work = Path(folder)
        images = make_set(work / "images")
        results: dict[str, Any] = {"model": args.model, "backend": args.backend, "clients": args.clients,
                                   "requests_per_client": args.requests, "max_batch": args.max_batch, "runs": {}}
        targets = [t for t in args.load_targets.split(",") if t]
        for target in targets:
            for batch in (1, args.max_batch):
                label = f"{target}, max batch {batch}"
                log.info("load: %s", label)
                run = session_load(args, images, batch) if target == "session" else app_load(args, images, batch, work)
                results["runs"][label] = run
                print(f"{label}: {run['throughput_per_s']} /s, p50 {run['p50_ms']} p95 {run['p95_ms']} "
                      f"p99 {run['p99_ms']} ms, {run['failures']} failures, {run['wrong_answers']} wrong", flush=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per run, throughput also as a ratio to the unbatched run of the same target."""
    rows = [f"{results['clients']} clients × {results['requests_per_client']} requests, {results['model']}, "
            f"images 448–512 px a side", "",
            "| run | images/s | × unbatched | p50 ms | p95 ms | p99 ms | failures | wrong | mean batch |",
            "|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for label, run in results["runs"].items():
        target = label.split(",")[0]
        base.setdefault(target, run["throughput_per_s"] or 1.0)
        ratio = run["throughput_per_s"] / base[target] if base[target] else 0.0
        rows.append(f"| {label} | {run['throughput_per_s']} | {ratio:.2f} | {run['p50_ms']} | {run['p95_ms']} | "
                    f"{run['p99_ms']} | {run['failures']} | {run['wrong_answers']} | "
                    f"{run.get('batches', {}).get('mean', '—')} |")
    return "\n".join(rows)
