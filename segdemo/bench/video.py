"""`segdemo bench --video`: a clip (made here, or --clip PATH) through the video path twice — in this process, on a
session made as `segdemo segment` makes its own (processing alone: probe, decode, engine, overlay, encode), then as the
user runs it: `python -m segdemo segment CLIP` in a fresh process, timed from its start to its exit (interpreter,
imports, the session's start from the caches, the job, writing the files), beside the clip's length."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("segdemo")

STAGES = ("decode", "segment", "overlay", "encode")


def video_run(args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """Time --clip (or a clip of `size`, --video-seconds at --video-fps made here) in this process, then end to end."""
    from ..backends import choose
    from ..media.video_io import CLI_LIMITS, probe
    from ..media.video_job import max_batch_for, segment_video
    from ..pipeline import Session, peak_rss_mb
    from ..profiling.spans import SpanRecorder
    from .clips import make_clip

    with tempfile.TemporaryDirectory(prefix="segdemo-bench-video-") as tmp:
        work = Path(tmp)
        clip = args.clip
        if clip is None:
            width, height = size
            log.info("bench --video: making a %d×%d clip of %g s at %d fps …", width, height, args.video_seconds,
                     args.video_fps)
            clip = make_clip(work / "clip.mp4", width, height, args.video_seconds, args.video_fps)
        info = probe(clip, CLI_LIMITS)
        backend, _ = choose(args.backend)
        start = time.perf_counter()
        with Session(args.model, backend, args.precision, args.build_dir, display_side=CLI_LIMITS.side,
                     warm_up="off", max_batch=max_batch_for(backend)) as session:
            load_s = time.perf_counter() - start
            # The stored size, so that a rotated --clip warms the same shapes up
            stored = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
            warm = make_clip(work / "warm.mp4", *stored, 0.2, 10, info.rotation)
            segment_video(session, warm, work / "warm-out.mp4", limits=CLI_LIMITS)  # first frames of this size
            log.info("bench --video: segmenting %s …", Path(clip).name)
            spans = SpanRecorder()
            result = segment_video(session, clip, work / "out.mp4", limits=CLI_LIMITS, spans=spans)
            out_bytes = result.path.stat().st_size
        peak_mb = peak_rss_mb()
        cli = cli_run(args, Path(clip), backend, work / "cli")
    stages: dict[str, float] = {}
    for s in spans.spans:
        if s.name in STAGES:
            stages[s.name] = stages.get(s.name, 0.0) + s.duration_ms / 1e3
    return {**result.summary(), "clip": str(args.clip) if args.clip else "made", "clip_bytes":
            Path(clip).stat().st_size if args.clip else None, "load_seconds": round(load_s, 3),
            "out_mb": round(out_bytes / 1e6, 2), "frames_per_second": result.frames / result.seconds,
            "peak_rss_mb": round(peak_mb), "stage_seconds": {k: round(v, 3) for k, v in stages.items()}, "cli": cli}


def cli_run(args: argparse.Namespace, clip: Path, backend: str, out: Path) -> dict[str, Any]:
    """`python -m segdemo segment CLIP` in a fresh process: seconds from its start to its exit, what it logged."""
    argv = [sys.executable, "-m", "segdemo", "segment", str(clip), "--model", args.model, "--backend", backend,
            "--precision", args.precision, "--out", str(out), "--no-show"]
    if args.build_dir is not None:
        argv += ["--build-dir", str(args.build_dir)]
    log.info("bench --video: timing the command line: %s", " ".join(argv[1:]))
    out.mkdir(parents=True, exist_ok=True)
    peak_kb = 0
    with (out / "segment.log").open("w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        while process.poll() is None:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise RuntimeError(f"segdemo segment failed ({process.returncode}): {text[-2000:]}")
    job = re.search(r"(\d+) frames in ([\d.]+) s", text)
    init = re.search(r"init time: ([\d.]+) ms", text)
    return {"seconds": round(seconds, 3), "command": " ".join(["python", *argv[1:]]),
            "job_seconds": float(job.group(2)) if job else None,
            "session_seconds": round(float(init.group(1)) / 1e3, 3) if init else None,
            "peak_rss_mb": round(peak_kb / 1024) if peak_kb else None}


def _high_water_kb(pid: int) -> int:
    """The process's peak resident memory so far (Linux's VmHWM: its own, unlike ru_maxrss, which a child forked
    from this large process starts at this one's size), 0 where it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def markdown(v: dict[str, Any]) -> list[str]:
    """The video rows: processing alone (in this process), then the command line end to end, beside the clip."""
    height, width = v["size"]
    source = f"{width}×{height} H.264 ({'made' if v['clip'] == 'made' else Path(v['clip']).name})"
    cli = v["cli"]
    stages = ", ".join(f"{k} {s:.2f} s" for k, s in v["stage_seconds"].items())
    return ["| video | frames | video s | wall s | frames/s | × real time | output MB | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
            f"| {source} → overlay MP4, processing alone | {v['frames']} | {v['video_seconds']:.1f} | "
            f"{v['wall_seconds']:.2f} | {v['frames_per_second']:.1f} | **{v['speed_vs_real_time']:.2f}×** | "
            f"{v['out_mb']:.1f} | {v['peak_rss_mb']} |",
            f"| `segdemo segment` end to end (process start → exit) | {v['frames']} | {v['video_seconds']:.1f} | "
            f"{cli['seconds']:.2f} | {v['frames'] / cli['seconds']:.1f} | "
            f"**{v['video_seconds'] / cli['seconds']:.2f}×** | | {cli['peak_rss_mb'] or '?'} |", "",
            f"Stage time summed over the clip (the stages overlap in their own threads): {stages}; decoder "
            f"{v.get('decoder', '?')}; x264 preset {v.get('x264_preset', '?')}. The command line's run: session "
            f"start {cli['session_seconds']} s, job {cli['job_seconds']} s of its {cli['seconds']:.2f} s. Peak "
            f"RSS: this process's for processing alone (the session and the job), the command's own (its decoder "
            f"child apart) end to end.", ""]
