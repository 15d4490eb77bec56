"""`segdemo bench --load`: many users at once — N concurrent clients × M requests against the session in this
process, against the real app through gradio_client, each without and with batching in the same run, and against an
engine tier alone (a Triton server: model inputs sent by tritonclient, as perf_analyzer would). `--clients 1,4,32`
repeats each run at every count on the same server or session.

Every image of the set has a size of its own, so an answer carries its image's identity: each is checked to have
its own image's size and to agree with that image's unbatched class map (≥ AGREEMENT: identical on the CPU;
fp16 kernels picked per batch size may round differently on a GPU). Throughput, p50/p95/p99 and failures per run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegdemoError
from ..profiling.spans import percentile
from .app import READY_S, gradio_client_for
from .tier import EngineCaller

log = logging.getLogger(__name__)

AGREEMENT = 0.99
TARGETS = ("session", "app", "floor", "front-ends", "engine")
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


class _Tally:
    """What the clients of one run saw: latencies (ms), failures and wrong answers (thread-safe)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.wrong: list[str] = []
        self.lock = threading.Lock()
        self.cpu_s = 0.0  # CPU seconds the clients' processes spent in the timed part (client processes only)
        self._answers: list[tuple[Any, list]] = []  # (check, [(index, answer)]) of each client, checked later

    def client(self, c: int, requests: int, call, check) -> None:
        """Client `c`: `requests` calls of call(index) → answer, each checked by check(index, answer) once all
        are made (checking in the clients' threads would take the GIL from a session under test)."""
        answers = []
        for k in range(requests):
            index = (c + k) % len(SIDES)
            start = time.perf_counter()
            try:
                answer = call(index)
            except Exception as exc:  # noqa: BLE001 — counted and reported, the run goes on
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {str(exc)[:160]}")
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            with self.lock:
                self.latencies.append(elapsed)
            answers.append((index, answer))
        self._answers.append((check, answers))

    def check(self) -> None:
        """Check the answers of every client (after the timed run)."""
        for check, answers in self._answers:
            self.wrong += [why for index, answer in answers if (why := check(index, answer))]
        self._answers = []

    def merge(self, other: tuple[list[float], list[str], list[str], float]) -> None:
        self.latencies += other[0]
        self.failures += other[1]
        self.wrong += other[2]
        self.cpu_s += other[3]

    def summary(self, clients: int, requests: int, wall: float) -> dict[str, Any]:
        done = len(self.latencies)
        return {"clients": clients, "requests": clients * requests, "answered": done,
                "failures": len(self.failures), "failure_examples": self.failures[:3],
                "wrong_answers": len(self.wrong), "wrong_examples": self.wrong[:3], "wall_s": round(wall, 2),
                "throughput_per_s": round(done / wall, 1) if wall else 0.0,
                "client_cpu_ms": round(self.cpu_s / done * 1e3, 2) if done and self.cpu_s else None,
                **{f"p{q}_ms": round(percentile(self.latencies, q), 1) if self.latencies else None
                   for q in (50, 95, 99)}}


def _drive(clients: int, requests: int, call, check) -> dict[str, Any]:
    """`clients` threads of this process × `requests` calls of call(index) → answer; check(index, answer) → None
    or why it is wrong."""
    tally = _Tally()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda c: tally.client(c, requests, call, check), range(clients)))
    wall = time.perf_counter() - start
    tally.check()
    return tally.summary(clients, requests, wall)


def _checker(expected: list[np.ndarray], sizes_only: bool = False):
    def check(index: int, class_map: np.ndarray) -> str | None:
        if class_map.shape != expected[index].shape:
            return f"image {index}: answer of size {class_map.shape}, its image is {expected[index].shape}"
        if sizes_only:
            return None
        agreement = float((class_map == expected[index]).mean())
        return None if agreement >= AGREEMENT else f"image {index}: {agreement:.4f} agreement with its own map"
    return check


def session_load(args: argparse.Namespace, images: list[tuple[Path, tuple[int, int]]],
                 max_batch: int) -> dict[int, dict[str, Any]]:
    """The load against a Session in this process, at each client count."""
    from ..pipeline import Session

    with Session(args.model, args.backend, args.precision, args.build_dir, warm_up="now",
                 max_batch=max_batch) as session:
        session.settle(timeout=600)
        expected = [session.segment(str(path)).class_map for path, _ in images]  # one at a time
        runs = {}
        for clients in counts(args):
            for _ in range(args.warmup):
                _drive(clients, 1, lambda i: session.segment(str(images[i][0])).class_map, lambda i, a: None)
            session.history.clear()
            run = _drive(clients, args.requests, lambda i: session.segment(str(images[i][0])).class_map,
                         _checker(expected))
            run["batches"] = _batch_sizes(session)
            run.update(backend=session.backend.name, precision=session.backend.precision)
            runs[clients] = run
    return runs


def counts(args: argparse.Namespace) -> list[int]:
    """The client counts of `--clients` (one number, or several separated by commas)."""
    try:
        found = [int(c) for c in str(args.clients).split(",") if c.strip()]
    except ValueError:
        found = []
    if not found or min(found) < 1:
        raise SegdemoError(f"--clients takes counts of at least 1 separated by commas, not {args.clients!r}")
    return found


def _batch_sizes(session: Any) -> dict[str, float]:
    sizes = [s.attrs["size"] for r in session.history.recent() for s in r.spans if s.name == "batch"]
    return {"mean": round(float(np.mean(sizes)), 2), "max": int(max(sizes))} if sizes else {"mean": 1.0, "max": 1}


def client_processes(clients: int, asked: int = 0) -> int:
    """Processes the app's clients run in: gradio_client's work is Python under one GIL, so 32 client threads in one
    process time the client, not the app; `asked` > 0 overrides (default: 4 clients a process, half the cores)."""
    if asked > 0:
        return min(asked, clients)
    return max(1, min(clients // 4, (os.cpu_count() or 1) // 2))


def _answer(kind: str, client: Any, path: str) -> np.ndarray:
    """One request through gradio_client: the app's class map (its classes PNG), or the floor's echoed image; for
    the engine tier, one tritonclient request of the image's model input."""
    if kind == "engine":
        return client.infer(path)
    from gradio_client import handle_file
    from PIL import Image

    from ..image.visuals import read_class_map

    if kind == "floor":
        with Image.open(client.predict(handle_file(path), api_name="/segment")) as image:
            return np.zeros(image.size[::-1], np.uint8)  # the floor echoes the upload: only its size is checked
    return read_class_map(client.predict(handle_file(path), 0.5, False, api_name="/segment")[1])


def _client_process(url: str, kind: str, paths: list[str], expected_file: str, first: int, count: int,
                    requests: int, warmup: int, download: str, barrier: Any, results: Any) -> None:
    """One process of `count` clients (threads, one gradio_client Client or EngineCaller each): warm up, meet the
    others at the barrier, then the timed requests; puts (latencies, failures, wrong, CPU seconds of the timed
    requests) on `results`."""
    def run(tally: _Tally, number: int, check) -> None:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda k: tally.client(first + k, number, lambda i: _answer(kind, clients[k], paths[i]),
                                                 check), range(count)))

    try:
        with np.load(expected_file) as saved:
            expected = [saved[str(i)] for i in range(len(saved.files))]
        clients = [EngineCaller(url, paths) if kind == "engine" else
                   gradio_client_for(url, download) for _ in range(count)]
        run(_Tally(), warmup, lambda i, a: None)
    except Exception as exc:  # noqa: BLE001 — the parent hears why instead of waiting out the barrier
        barrier.abort()
        results.put(([], [f"client process: {type(exc).__name__}: {exc}"], [], 0.0))
        return
    barrier.wait(timeout=READY_S)
    tally, begin = _Tally(), time.process_time()
    try:
        run(tally, requests, _checker(expected, sizes_only=kind == "floor"))
        tally.cpu_s = time.process_time() - begin  # before the check, which is not the clients' work
        tally.check()
    finally:
        results.put((tally.latencies, tally.failures, tally.wrong, tally.cpu_s))


def _drive_processes(url: str, kind: str, paths: list[str], expected: list[np.ndarray], clients: int,
                     args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`clients` clients spread over client processes, all starting together after their warm-up."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    count = client_processes(clients, args.client_processes)
    expected_file = work / f"expected-{kind}.npz"
    # numpy's stub lets **kwds reach allow_pickle (a bool); the keys here are array names
    np.savez(expected_file, **{str(i): m for i, m in enumerate(expected)})  # type: ignore[arg-type]
    barrier, results = context.Barrier(count + 1), context.Queue()
    shares = [clients // count + (1 if p < clients % count else 0) for p in range(count)]
    processes = []
    for p, share in enumerate(shares):
        process = context.Process(target=_client_process, daemon=True, name=f"load client {p}", args=(
            url, kind, paths, str(expected_file), sum(shares[:p]), share, args.requests,
            max(1, args.warmup), str(work / "downloads"), barrier, results))
        process.start()
        processes.append(process)
    try:
        barrier.wait(timeout=READY_S)
    except threading.BrokenBarrierError:
        why = results.get(timeout=5)[1] if not results.empty() else [f"not all ready after {READY_S} s"]
        raise SegdemoError(f"load: the client processes could not start their run ({why[0]})") from None
    start, tally = time.perf_counter(), _Tally()
    for _ in processes:
        tally.merge(results.get(timeout=READY_S))
    wall = time.perf_counter() - start
    for process in processes:
        process.join(timeout=30)
    return {**tally.summary(clients, args.requests, wall), "client_processes": count}


def app_load(args: argparse.Namespace, images: list[tuple[Path, tuple[int, int]]], max_batch: int,
             work: Path, front_ends: int = 1, kind: str = "app") -> dict[int, dict[str, Any]]:
    """The load against the real app (`python app.py`, or the floor: a do-nothing Gradio app) through gradio_client
    clients spread over client processes."""
    import sys

    from ..web.config import AppConfig
    from .app import Server

    def argv(port: int) -> list[str]:
        if kind == "floor":
            config = AppConfig()
            return [sys.executable, "-c", f"from segdemo.bench.app import serve_floor; "
                    f"serve_floor({port}, {config.workers}, {config.queue_size})"]
        return [sys.executable, "app.py", "--model", args.model, "--backend", args.backend, "--port", str(port),
                "--precision", args.precision,
                "--max-batch", str(max_batch)] + (["--front-ends", str(front_ends)] if front_ends > 1 else []) \
            + (["--build-dir", str(args.build_dir)] if args.build_dir else [])

    name = "floor" if kind == "floor" else f"app-batch{max_batch}-fe{front_ends}"
    extra = () if kind == "floor" else (0.5, False)
    with Server(name, argv, work, args.out) as server:
        server.ready(str(images[0][0]), extra, work / "downloads")
        if kind == "app":  # the floor has no background work (and never logs its end)
            server.settle(args.backend, front_ends=front_ends)
        client = gradio_client_for(server.url, str(work / "downloads"))
        paths = [str(path) for path, _ in images]
        expected = [_answer(kind, client, path) for path in paths]  # one at a time
        runs = {clients: _drive_processes(server.url, kind, paths, expected, clients, args, work)
                for clients in counts(args)}
    for run in runs.values():
        run["ready_s"] = round(server.ready_s, 1)
    return runs


def engine_load(args: argparse.Namespace, images: list[tuple[Path, tuple[int, int]]],
                work: Path) -> dict[int, dict[str, Any]]:
    """The load against the engine tier at --backend (triton://…) alone: no Gradio, no decoding per request."""
    from ..backends.triton import is_url

    if not is_url(args.backend):
        raise SegdemoError("--load-targets engine times an engine tier: pass its address as --backend "
                           "triton://HOST:PORT/MODEL (e.g. one started by segdemo triton serve)")
    paths = [str(path) for path, _ in images]
    caller = EngineCaller(args.backend, paths)
    expected = [caller.infer(path) for path in paths]  # one at a time
    runs = {}
    for clients in counts(args):
        before = caller.counters()  # the server's share of this run: queue, execute, batches (warm-ups included)
        run = _drive_processes(args.backend, "engine", paths, expected, clients, args, work)
        runs[clients] = {**run, "server": caller.counters().since(before)}
    return runs


def run_load_bench(args: argparse.Namespace) -> int:
    """Session and app, unbatched then batched, same images, same run; prints a table, writes load.json."""
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segdemo-load-") as folder:
        work = Path(folder)
        images = make_set(work / "images")
        several = len(counts(args)) > 1
        results: dict[str, Any] = {"model": args.model, "backend": args.backend, "clients": args.clients,
                                   "requests_per_client": args.requests, "max_batch": args.max_batch,
                                   "front_ends": args.front_ends, "runs": {}}
        targets = [t for t in args.load_targets.split(",") if t]
        unknown = set(targets) - set(TARGETS)
        if unknown:
            raise SegdemoError(f"--load-targets takes {', '.join(TARGETS)}, not {', '.join(sorted(unknown))}")
        for target in targets:
            for batch, front_ends in _runs(target, args.max_batch, args.front_ends):
                kind = "app" if target == "front-ends" else target
                label = target if target in ("floor", "engine") else f"{kind}, max batch {batch}" + (
                    f", {front_ends} front ends" if front_ends > 1 else "")
                log.info("load: %s", label)
                if target == "session":
                    runs = session_load(args, images, batch)
                elif target == "engine":
                    runs = engine_load(args, images, work)
                else:
                    runs = app_load(args, images, batch, work, front_ends, kind=kind)
                for clients, run in runs.items():
                    name = f"{label}, {clients} clients" if several else label
                    results["runs"][name] = run
                    (args.out / "load.json").write_text(json.dumps(results, indent=1) + "\n")  # each as it ends
                    print(f"{name}: {run['throughput_per_s']} /s, p50 {run['p50_ms']} p95 {run['p95_ms']} "
                          f"p99 {run['p99_ms']} ms, {run['failures']} failures, {run['wrong_answers']} wrong"
                          + (f", client CPU {run['client_cpu_ms']} ms a request" if run.get("client_cpu_ms") else "")
                          + server_line(run.get("server")), flush=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def server_line(server: dict[str, Any] | None) -> str:
    """The engine tier's own account of a run (Triton's statistics), or nothing for the other targets."""
    if not server or not server.get("requests"):
        return ""
    phases = server["per_request"]
    sizes = ", ".join(f"{size}: {b['executions']} × {b['execute_ms']} ms" for size, b in server["batch_sizes"].items())
    return (f"\n  in the server, ms a request: {phases['success_ms']} in all, queue {phases['queue_ms']}, "
            f"input {phases['compute_input_ms']}, execute {phases['compute_infer_ms']}, output "
            f"{phases['compute_output_ms']}; {server['executions']} executions, mean batch {server['mean_batch']} "
            f"(batch size: executions × ms each: {sizes})")


def _runs(target: str, max_batch: int, front_ends: int) -> list[tuple[int, int]]:
    """(max batch, front ends) of each run of a target: unbatched first (the baseline), then batched, then the
    app's several front ends; the floor and the engine tier (its batches are its own) run once, "front-ends" only
    the last of the app's."""
    if target in ("floor", "engine"):
        return [(1, 1)]
    if target == "front-ends":  # only the app's run with several front ends
        return [(max_batch, front_ends)]
    runs = [(1, 1), (max_batch, 1)] if max_batch > 1 else [(1, 1)]
    return runs + ([(max_batch, front_ends)] if target == "app" and front_ends > 1 else [])


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per run, throughput also as a ratio to the unbatched run of the same target."""
    rows = [f"{results['clients']} clients × {results['requests_per_client']} requests, {results['model']}, "
            f"images 448–512 px a side", "",
            "| run | images/s | × unbatched | p50 ms | p95 ms | p99 ms | failures | wrong | mean batch "
            "| client CPU ms |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    base: dict[tuple[str, int], float] = {}  # the first run of each target at each client count: its baseline
    for label, run in results["runs"].items():
        key = (label.split(",")[0], run["clients"])
        base.setdefault(key, run["throughput_per_s"] or 1.0)
        ratio = run["throughput_per_s"] / base[key] if base[key] else 0.0
        rows.append(f"| {label} | {run['throughput_per_s']} | {ratio:.2f} | {run['p50_ms']} | {run['p95_ms']} | "
                    f"{run['p99_ms']} | {run['failures']} | {run['wrong_answers']} | "
                    f"{_mean_batch(run)} | {run.get('client_cpu_ms') or '—'} |")
    return "\n".join(rows)


def _mean_batch(run: dict[str, Any]) -> Any:
    """A run's mean batch: the session's own record, or the engine tier's (Triton's statistics)."""
    if "batches" in run:
        return run["batches"]["mean"]
    return run.get("server", {}).get("mean_batch") or "—"
