"""`segdemo bench --app`: the floor (a do-nothing Gradio app: same endpoint shape, same queue) and `python app.py`
on 127.0.0.1, timed by the same gradio_client code and, where Chromium is, by the page's clock; nothing is asserted."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import SegdemoError
from ..serving.frontends import free_port
from . import app_report as report
from .app_browser import browser_unavailable, time_browser
from .facts import cpu_name, gpu_name
from .images import image_names, make_images
from .report import results_of

log = logging.getLogger("segdemo")

ROOT = Path(__file__).resolve().parents[2]  # the repository: app.py is started from here
SMOKE_APP = dict(model="random:tiny", app_images="512", browser_images="512", iters=2, warmup=1, browser_iters=None)
APP_EXTRA = (0.5, False)  # the app's opacity and "detailed" inputs after the image
READY_S = 900  # an uncached export of a large model plus an engine build can take minutes


def run_app_bench(args: argparse.Namespace) -> int:
    """Measure (or re-render --from-json), write results-app.json and bench-app.md, print the tables."""
    results = results_of(args, SMOKE_APP, lambda a: report.derive(measure(a)))
    files = report.write_outputs(results, args.out, args.markdown, args.section)
    if not args.from_json:
        files.update({f"{name} log": args.out / f"{name}.log" for name in ("floor", "app")})
    for name, path in files.items():
        print(f"{name:9s} {path}")
    print(report.tables_text(results))
    return 0


# ----------------------------------------------------------------------------------------------------- servers


@functools.cache
def _tls_context() -> Any:
    """httpx's default TLS context, made once a process (see gradio_client_for)."""
    import httpx

    return httpx.create_ssl_context()


def gradio_client_for(url: str, download: str) -> Any:
    """A gradio_client Client as every bench uses it: files downloaded under `download`, no analytics, and one TLS
    context for all its requests. gradio_client passes `ssl_verify` to a fresh httpx client for each of a predict's
    four calls, and httpx re-reads the CA bundle for each unless handed a context: ~100 ms of client CPU a request,
    which made the load generator the limit of every load run before (docs/benchmarks.md)."""
    from gradio_client import Client

    return Client(url, verbose=False, download_files=download, analytics_enabled=False, ssl_verify=_tls_context())


def serve_floor(port: int, concurrency: int = 1, queue: int = 16) -> None:
    """The floor: the app's endpoint shape doing nothing (run in its own process by `measure`, and by `bench --load`
    with the app's concurrency and queue)."""
    import gradio as gr

    with gr.Blocks(title="segdemo bench floor") as blocks:
        gr.Markdown("floor: a do-nothing app", elem_id="banner")
        image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"])
        run = gr.Button("Segment", variant="primary")
        overlay = gr.Image(label="Overlay", type="filepath", elem_id="overlay")
        run.click(lambda path: path, [image], [overlay], api_name="segment", concurrency_limit=concurrency)
    blocks.queue(max_size=queue)
    blocks.launch(server_name="127.0.0.1", server_port=port, max_file_size="25mb")


class Server:
    """A Gradio server in a subprocess on 127.0.0.1, its output in a log file; leaving the `with` ends it."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], work: Path, keep: Path) -> None:
        self.port = free_port()
        self.name, self.url, self.keep = name, f"http://127.0.0.1:{self.port}/", keep
        self.log_file = work / f"{name}.log"
        self.argv = argv(self.port)
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
               "SEGDEMO_HOST": "127.0.0.1", "GRADIO_SERVER_NAME": "127.0.0.1", "SEGDEMO_SHARE": "0",
               "GRADIO_TEMP_DIR": str(work / "gradio-cache"),  # the servers' copies go away with the run
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with self.log_file.open("w") as fh:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.started = time.perf_counter()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):  # the run's folder is removed; the log stays next to the results
            self.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_file, self.keep / self.log_file.name)

    def show_log(self, lines: int = 40) -> None:
        tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        log.error("%s log (last %d lines):\n%s", self.name, lines, tail)

    def fail(self, why: str) -> SegdemoError:
        """An error for `why`, after showing the tail of the server's log."""
        self.show_log()
        return SegdemoError(f"{self.name} ({shlex.join(self.argv)}): {why} — its log is above")

    def wait_for(self, text: str, timeout: float, count: int = 1) -> bool:
        """Wait until `count` lines of the server's log contain `text` (e.g. background work done, once per front
        end); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.log_file.read_text(errors="replace").count(text) >= count:
                return True
            time.sleep(0.5)
        return False

    def settle(self, backend: str, timeout: float = 900, front_ends: int = 1) -> None:
        """Wait for the app's background work at start-up (torch-cuda: program, batch graphs, compilation) in each
        front end — or once, in the engine tier they share — so the bench times a settled app, as Session.settle does
        for in-process benches."""
        if backend == "torch-cuda":
            from ..backends.torch_cuda import BACKGROUND_DONE
            from ..serving.engine_tier import SHARED

            if front_ends > 1 and SHARED in self.log_file.read_text(errors="replace"):
                front_ends = 1  # the front ends hold no model: only the tier's background work is logged (relayed)
            if not self.wait_for(BACKGROUND_DONE, timeout, front_ends):
                log.warning("%s: background work not done after %.0f s; timing it anyway", self.name, timeout)

    def ready(self, first: str, extra: tuple, download: Path) -> Any:
        """Wait for the page, then retry a first predict until it succeeds; return the client."""
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        deadline = time.monotonic() + READY_S
        while True:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with code {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise self.fail(f"not ready after {READY_S} s")
            try:
                urllib.request.urlopen(self.url, timeout=5).close()
                # Same settings for both servers: what docs/app.md shows, files downloaded into the run's folder.
                client = gradio_client_for(self.url, str(download))
                client.submit(handle_file(first), *extra, api_name="/segment").result(timeout=READY_S)
                self.ready_s = time.perf_counter() - self.started
                return client
            except AppError as exc:  # the app answered with an error (requests wait for start-up, so it is real)
                raise self.fail(f"the first request failed: {exc}") from None
            except Exception as exc:  # noqa: BLE001 — not up, still loading, or failing: retried until the deadline
                log.debug("%s not ready yet: %s", self.name, exc)
                time.sleep(1.0)


# ----------------------------------------------------------------------------------------------------- timing


def time_api(client: Any, paths: list[str], extra: tuple, warmup: int, iters: int) -> tuple[list[float], list]:
    """Round trips (ms) of `iters` predicts after `warmup` untimed ones, and the timed requests' results."""
    from gradio_client import handle_file

    times, results = [], []
    for i in range(warmup + iters):
        upload = handle_file(paths[i % len(paths)])
        start = time.perf_counter()
        result = client.predict(upload, *extra, api_name="/segment")
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
            results.append(result)
    return times, results


# ----------------------------------------------------------------------------------------------------- the run


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the floor and the app, time the API on every image and, where possible, the browser."""
    names = image_names(args.app_images, "--app-images")
    chromium = os.environ.get("SEGDEMO_CHROMIUM", "/usr/bin/chromium")
    skipped = browser_unavailable(chromium) if args.browser else "--no-browser"
    browser_names = image_names(args.browser_images, "--browser-images") if not skipped else []
    if skipped:
        print(f"bench --app: browser timing skipped: {skipped}")
    browser_iters = args.browser_iters or args.iters
    build = ["--build-dir", str(args.build_dir.resolve())] if args.build_dir else []
    app_argv = ["app.py", "--model", args.model, "--backend", args.backend, *build]
    with tempfile.TemporaryDirectory(prefix="segdemo-bench-app-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        images = make_images(work / "images", list(dict.fromkeys(names + browser_names)),
                             args.warmup + max(args.iters, browser_iters if browser_names else 0))
        floor = stack.enter_context(Server("floor", lambda port: [
            sys.executable, "-c", f"from segdemo.bench.app import serve_floor; serve_floor({port})"], work, args.out))
        app = stack.enter_context(Server("app", lambda port: [sys.executable, *app_argv, "--port", str(port)], work,
                                         args.out))
        first = images[names[0]]["paths"][0]
        floor_client = floor.ready(first, (), work / "client")
        app_client = app.ready(first, APP_EXTRA, work / "client")
        app.settle(args.backend)
        log.info("bench --app: floor ready after %.1f s, app after %.1f s", floor.ready_s, app.ready_s)
        api: dict[str, dict[str, Any]] = {}
        served: dict[str, Any] = {}
        for name in names:
            paths = images[name]["paths"]
            log.info("bench --app: API, %s …", name)
            try:
                floor_ms, _ = time_api(floor_client, paths, (), args.warmup, args.iters)
                app_ms, outs = time_api(app_client, paths, APP_EXTRA, args.warmup, args.iters)
            except Exception as exc:  # noqa: BLE001 — one image failing still reports the others
                log.exception("bench --app: %s failed", name)
                app.show_log(20)
                api[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            timings = [o[3] for o in outs]
            served = served or {k: outs[0][2].get(k) for k in ("backend", "precision", "device")}
            session = [t["infer_ms"] for t in timings]
            api[name] = {"floor_ms": report.stats(floor_ms), "app_ms": report.stats(app_ms),
                         "session_ms": report.stats(session),
                         "spans_ms": report.span_medians([t.get("spans_ms", {}) for t in timings]),
                         "raw": {"floor_ms": floor_ms, "app_ms": app_ms, "session_ms": session}}
        browser: dict[str, Any] = {"skipped": skipped}
        if not skipped:
            log.info("bench --app: browser, %s …", ", ".join(browser_names))
            try:
                browser["images"] = time_browser(chromium, floor.url, app.url, images, browser_names,
                                                 args.warmup, browser_iters)
            except Exception as exc:  # noqa: BLE001 — the browser part never fails the run: it says why
                log.exception("bench --app: browser timing failed")
                browser = {"skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        ready = {"floor": round(floor.ready_s, 1), "app": round(app.ready_s, 1)}
    return {"meta": _meta(args, served, app_argv, ready, browser_iters),
            "images": {n: {k: v for k, v in images[n].items() if k != "paths"} for n in images},
            "api": api, "browser": browser}


def _meta(args: argparse.Namespace, served: dict[str, Any], app_argv: list[str], ready: dict[str, float],
          browser_iters: int) -> dict[str, Any]:
    from ..gpu import package_versions

    device = served.get("device") or ("cpu" if served.get("backend") in (None, "onnxruntime") else "cuda")
    argv = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model, "backend": args.backend, "served_by": served, "device": device,
        "iters": args.iters, "warmup": args.warmup, "browser_iters": browser_iters, "ready_s": ready,
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count(),
                    "gpu": gpu_name()},
        "versions": {"python": platform.python_version(), **package_versions(
            ("gradio", "gradio_client", "torch", "onnxruntime", "pillow", "playwright"))},
        "command": "python -m segdemo bench " + shlex.join(argv),
        "app_command": "python " + shlex.join([*app_argv, "--port", "PORT"]),
        "browser_method": "headless Chromium, a fresh page per page state; upload first (untimed, until the preview "
                          "is loaded), then click → #overlay img with a new src loaded + one rAF; everything = "
                          "overlay, status, downloads and timeline each past its loading state (or changed), "
                          "images loaded, + one rAF",
    }
