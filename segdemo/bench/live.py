"""`segdemo bench --live --video`: webcam-sized frames through the live handler (`media.live.LiveStream`, what the Live
tab's stream calls), on one session in this process, and a video file (`bench.video`).

Live, two ways: a camera thread offering JPEG frames at --camera-fps (each in its own thread, as Gradio's workers
call the handler, so latest-frame-wins drops what the engine cannot take: delivered fps, latency from the frame's
arrival to its overlay JPEG, frames replaced), and frames back to back (the handler's own ceiling). Video: an H.264
clip (default 1920×1080, 10 s, 30 fps, or --clip) → overlay MP4 at full size, in this process and through the command
line end to end; speed against real time. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from ..errors import SegdemoError
from .facts import cpu_name, gpu_name
from .report import fmt_ms, merge_section, percentiles, results_of

log = logging.getLogger("segdemo")

SMOKE_LIVE = dict(model="random:tiny", live_size="160x120", live_seconds=1.0, camera_fps=10, video_size="160x120",
                  video_seconds=0.5, video_fps=10)


def _size(text: str, option: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise SegdemoError(f"{option} wants WIDTHxHEIGHT, got '{text}'") from None
    return width, height


def run_live_bench(args: argparse.Namespace) -> int:
    """Measure (or re-render --from-json), write results-live.json and bench-live.md, print the summary."""
    results = results_of(args, SMOKE_LIVE, measure)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"json": args.out / "results-live.json", "markdown": args.out / "bench-live.md"}
    files["json"].write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    files["markdown"].write_text(text)
    if args.markdown:
        section = args.section or f"live-{'cuda' if results['meta'].get('gpu') else 'cpu'}"
        merge_section(args.markdown, section, text)
        files["docs"] = args.markdown
    for name, path in files.items():
        print(f"{name:9s} {path}")
    print(text)
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from ..pipeline import Session
    from .video import video_run

    live_size = _size(args.live_size, "--live-size")
    video_size = _size(args.video_size, "--video-size")
    results: dict[str, Any] = {}
    if args.live:
        start = time.perf_counter()
        with Session(args.model, args.backend, args.precision, args.build_dir) as session:
            cold = time.perf_counter() - start
            session.settle(timeout=600)  # no timing while a background compilation shares the host
            results["meta"] = meta(args, session.backend, cold)
            results["live"] = [live_run(session, live_size, args.live_seconds, args.camera_fps),
                               live_run(session, live_size, args.live_seconds, 0)]
    if args.video:  # on a session of its own, made as `segdemo segment` makes it
        results["video"] = video_run(args, video_size)
        results.setdefault("meta", meta(args, None, results["video"]["load_seconds"], results["video"]))
    return results


def live_run(session: Any, size: tuple[int, int], seconds: float, camera_fps: float) -> dict[str, Any]:
    """Frames through one LiveStream for `seconds`: paced like a camera, or back to back when camera_fps is 0."""
    from ..media.live import LiveStream
    from .clips import jpeg_frames

    width, height = size
    frames = jpeg_frames(width, height, 30)
    stream = LiveStream(session, window_s=seconds + 10)
    for k in range(3):  # warm-up (first frames of a size may build buckets or caches)
        stream.offer(frames[k])
    stream = LiveStream(session, window_s=seconds + 10)
    done: list[Any] = []
    lock = threading.Lock()

    def offer(jpeg: bytes) -> None:
        result = stream.offer(jpeg)
        if result is not None:
            with lock:
                done.append(result)

    label = f"camera at {camera_fps:g} fps" if camera_fps else "back to back"
    log.info("bench --live: %s×%s, %s, %.0f s …", width, height, label, seconds)
    offered, threads = 0, []
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds:
        jpeg = frames[offered % len(frames)]
        offered += 1
        if camera_fps:
            threads.append(threading.Thread(target=offer, args=(jpeg,), daemon=True))
            threads[-1].start()
            next_tick = begin + offered / camera_fps
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        else:
            offer(jpeg)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    latency = percentiles([d.latency_ms for d in done]) if done else None
    spans: dict[str, list[float]] = {}
    for d in done:
        for name, ms in d.spans.durations_ms().items():
            spans.setdefault(name, []).append(ms)
    return {"mode": label, "size": f"{width}x{height}", "seconds": round(elapsed, 3), "offered": offered,
            "delivered": len(done), "replaced": stream.stats.dropped,
            "fps": len(done) / elapsed if elapsed else 0.0, "latency_ms": latency,
            "spans_p50_ms": {n: percentiles(v)["p50"] for n, v in sorted(spans.items(), key=lambda kv: -sum(kv[1]))}}


def meta(args: argparse.Namespace, backend: Any, cold_s: float, video: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's facts: the live session's `backend`, or (video only) what the video run's session was."""
    from ..gpu import package_versions

    engine = {"backend": backend.name, "precision": backend.precision, "device": backend.device} if backend else \
        {"backend": video["backend"], "precision": video["precision"], "device": video["device"]}  # type: ignore[index]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model, **engine, "cold_start_s": round(cold_s, 2),
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count()},
        "gpu": gpu_name(),
        "versions": {"python": platform.python_version(),
                     **package_versions(("torch", "onnxruntime", "av", "numpy", "pillow"))},
        "command": "python -m segdemo bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    where = m["gpu"] or f"{m['machine']['cpu']} ({m['machine']['cores']} cores)"
    lines = [f"### Live and video: {m['model']} on {m['backend']} ({m['device']}, {m['precision']}) — {where}", "",
             f"- date: {m['date']}; session start {m['cold_start_s']:.1f} s; "
             f"versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- command: `{m['command']}`", ""]
    if results.get("live"):
        lines += ["| live (LiveStream.offer) | frame | offered | delivered | replaced | fps | latency p50 ms | "
                  "latency p95 ms |", "|---|---|---|---|---|---|---|---|"]
        for r in results["live"]:
            lat = r["latency_ms"] or {}
            lines.append(f"| {r['mode']} | {r['size']} | {r['offered']} | {r['delivered']} | {r['replaced']} | "
                         f"{r['fps']:.1f} | {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p95'))} |")
        lines += ["", "Where a live frame's time goes (median ms per span, back to back): " + ", ".join(
            f"{n} {fmt_ms(v)}" for n, v in list(results["live"][-1]["spans_p50_ms"].items())[:10]), ""]
    if results.get("video"):
        from .video import markdown as video_markdown

        lines += video_markdown(results["video"])
    return "\n".join(lines)
