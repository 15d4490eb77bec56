"""`python -m segdemo bench`: its options and dispatch; the work is done by `segdemo.bench`, imported on use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.source import MODEL_HELP
from . import Command
from .options import add_backend, add_build_dir, add_model, add_precision

HELP = ("time the transformers pipeline against each segdemo backend (JSON, Markdown, Plotly); "
        "--app: the web app as its users wait for it; --live/--video: webcam frames and video files")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The engine bench's options, then the --app group (which reuses several of them)."""
    add_model(p, "random:b4", MODEL_HELP.replace("default", "bench default random:b4; segdemo default"))
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
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="time the transformers pipeline too, the reference of the agreement and speed-up columns "
                        "(default on; at 12 MP it holds every class upsampled: 7 GB)")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for results.json, bench.md, bench.html")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write the results into this Markdown file, replacing its --section only")
    p.add_argument("--section", default=None, help="section name inside --markdown (default: the device)")
    add_build_dir(p)
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
    add_backend(app, help="--app: the app's --backend (default auto)")
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
    cold = p.add_argument_group("--cold-start N: N fresh processes in a row on --build-dir, spawn → ready → result")
    cold.add_argument("--cold-start", type=int, default=0, metavar="N", help="time N restarts (first may build)")
    cold.add_argument("--code", type=Path, default=None, help="--cold-start: another segdemo checkout to time")
    cold.add_argument("--image", type=Path, default=None, help="--cold-start: the first request's image")
    live = p.add_argument_group("--live / --video: webcam-sized frames through the Live tab's handler, and a clip "
                                "through the video path in this process and as `segdemo segment` end to end; also uses "
                                "--model, --backend, --build-dir, --out, --markdown, --section (default "
                                "live-cpu/live-cuda), --from-json (results-live.json), --smoke")
    live.add_argument("--live", action="store_true", help="time live frames: paced like a camera, then back to back")
    live.add_argument("--video", action="store_true", help="time a video file: decode → segment → overlay → encode")
    add_precision(live, help="--live/--video/--cold-start: the session's precision (default auto)")
    live.add_argument("--live-size", default="640x480", help="--live: frame size WIDTHxHEIGHT (default 640x480)")
    live.add_argument("--live-seconds", type=float, default=10.0, help="--live: seconds per mode (default 10)")
    live.add_argument("--camera-fps", type=float, default=30.0,
                      help="--live: the camera's frame rate for the paced mode (default 30)")
    live.add_argument("--video-size", default="1920x1080", help="--video: clip size WIDTHxHEIGHT (default 1920x1080)")
    live.add_argument("--video-seconds", type=float, default=10.0, help="--video: clip length (default 10 s)")
    live.add_argument("--video-fps", type=int, default=30, help="--video: clip frame rate (default 30)")
    live.add_argument("--clip", type=Path, default=None,
                      help="--video: time this video file instead of a made clip (in this process and as "
                           "`segdemo segment CLIP` end to end)")


    load = p.add_argument_group("--load: N concurrent clients × M requests against the session and the real app, "
                                "each unbatched and with --max-batch, same run (uses --model, --backend, --out)")
    load.add_argument("--load", action="store_true", help="run the load test")
    load.add_argument("--clients", default="8",
                      help="--load: concurrent clients, or several counts separated by commas, each timed on the same "
                           "session or server (default 8)")
    load.add_argument("--requests", type=int, default=10, help="--load: requests per client (default 10)")
    load.add_argument("--max-batch", type=int, default=8, help="--load: the batched runs' max batch (default 8)")
    load.add_argument("--load-targets", default="session,app",
                      help="--load: any of session, app, floor (a do-nothing Gradio app: Gradio's own ceiling), "
                           "front-ends (only the app's --front-ends run), engine (the engine tier at --backend "
                           "triton://… alone) (default session,app)")
    load.add_argument("--front-ends", type=int, default=1,
                      help="--load: > 1 adds a run of the app with this many front-end processes (app.py --front-ends)")
    load.add_argument("--client-processes", type=int, default=0,
                      help="--load: processes the app's clients are spread over (default: 4 clients each, at most "
                           "half the cores) — one Python process of many gradio_client clients times itself")


def run(args: argparse.Namespace) -> int:
    """--app: the app bench; --cold-start: restarts; otherwise measure (or re-render --from-json), write the files,
    print the table."""
    if args.cold_start:
        return _cold_start(args)
    if args.load:
        from ..bench.load import run_load_bench

        return run_load_bench(args)
    if args.app:
        from ..bench.app import run_app_bench  # only `bench --app` loads the app benchmark (and gradio_client)

        return run_app_bench(args)
    if args.live or args.video:
        from ..bench.live import run_live_bench

        return run_live_bench(args)
    from ..bench.engine import SMOKE, run_bench
    from ..bench.report import markdown_table, results_of, write_outputs

    results = results_of(args, SMOKE, run_bench)
    files = write_outputs(results, args.out, args.markdown, args.section)
    for name, path in files.items():
        print(f"{name:9s} {path}")
    print(markdown_table(results))
    return 0


def _cold_start(args: argparse.Namespace) -> int:
    from ..artifacts import resolve_build_dir
    from ..bench.cold_start import cold_starts, table
    from ..web.examples import example_files

    build_dir = resolve_build_dir(args.build_dir)
    image = args.image or Path(example_files(build_dir)[0])
    runs = cold_starts(args.model, args.backend, args.precision, build_dir.resolve(), image.resolve(), args.cold_start,
                       args.code.resolve() if args.code else None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold-start.json").write_text(json.dumps(runs, indent=1) + "\n")
    print(table(runs, f"{args.model} {runs[0]['backend']} {runs[0]['precision']}"))
    return 0


COMMAND = Command("bench", HELP, add_arguments, run)
