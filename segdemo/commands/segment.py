"""`segdemo segment`: one image → classes.png, overlay.png, legend.json, profiling.json (the seed's trtinfer);
a video file → overlay.mp4 (H.264), shares.csv and shares.json (each class's share per frame), profiling.json."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..media.video_io import CLI_LIMITS, is_video_path
from . import Command
from .options import add_session_options

if TYPE_CHECKING:
    from ..media.video_io import DecoderProcess, VideoLimits

log = logging.getLogger("segdemo")


def _segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, metavar="FILE",
                   help="image file (PNG, JPEG, WebP, …) or video file (.mp4, .mov, .mkv, .webm, …)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    add_session_options(p)
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity, 0..1 (default 0.5)")
    p.add_argument("--detailed", action="store_true",
                   help="add per-layer spans from the backend's profiler to profiling.json (slower)")
    p.add_argument("--no-show", action="store_true", help="do not open the overlay in an image viewer")
    p.add_argument("--max-seconds", type=float, default=None,
                   help=f"videos: refuse longer ones (default {CLI_LIMITS.seconds:g} s; up to "
                        f"{CLI_LIMITS.side} px on the long side, {CLI_LIMITS.bytes // 2**30} GB)")


def _segment(args: argparse.Namespace) -> int:
    if is_video_path(args.image):
        return _segment_video(args)
    from ..image.decode import decode
    from ..pipeline import Session
    from ..profiling.spans import INFERENCE, SpanRecorder
    from ..profiling.trace import write_trace

    spans = SpanRecorder()
    with spans.span("decode", INFERENCE, file=args.image.name):
        image = decode(args.image)  # a bad image fails here, before any model loading
    with Session(args.model, args.backend, args.precision, args.build_dir, warm_up="off") as session:
        result = session.segment(image, spans, detailed=args.detailed)
        files = result.write(args.out, args.opacity)
        files["profiling"] = write_trace(args.out / "profiling.json", session.trace_spans(spans), result.info)
    for entry in result.legend[:5]:
        log.info("  %-20s %5.1f %%", entry.name, entry.share * 100)
    for name, path in files.items():
        print(f"{name:8s} {path}")
    if not args.no_show:
        _show(files["overlay"])
    return 0


def _segment_video(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..media.video_io import open_video
    from ..media.video_job import decoder_mode

    limits = CLI_LIMITS if args.max_seconds is None else replace(CLI_LIMITS, seconds=args.max_seconds)
    # The job's own decoder child, first: a bad video fails here, before any model loading, and the child starts (and
    # decodes ahead) while the session loads, where a probe's child of its own took its start-up before that.
    child = open_video(args.image, limits, decoder_mode(args.backend))
    try:
        return _run_video(args, child, limits)
    finally:
        child.close()  # the job closes it; here too if the session's load failed


def _run_video(args: argparse.Namespace, child: DecoderProcess, limits: VideoLimits) -> int:
    from ..backends import choose
    from ..media.video_job import Pace, max_batch_for, segment_video, write_outputs
    from ..pipeline import Session
    from ..profiling.spans import SpanRecorder

    info = child.info
    log.info("%s: %d×%d, %.1f s at %.2f fps, about %d frames (%s)", args.image.name, info.width, info.height,
             info.seconds, float(info.fps), info.frames, info.codec)
    spans = SpanRecorder()
    shown = [-1]

    def report(fraction: float, line: str) -> None:  # about every tenth of the clip
        if int(fraction * 10) != shown[0]:
            shown[0] = int(fraction * 10)
            log.info("  %s", line)

    backend, _ = choose(args.backend)
    # One-shot: nothing in the background (no compilation to wait for at exit), batches where the backend runs them.
    with Session(args.model, backend, args.precision, args.build_dir, display_side=limits.side, warm_up="off",
                 max_batch=max_batch_for(backend)) as session:
        result = segment_video(session, child, args.out / "overlay.mp4", args.opacity, limits,
                               Pace(info.fps, report), spans)
        files = {"video": result.path, **write_outputs(result, args.out, session.load_spans.spans)}
    log.info("%d frames in %.1f s: %.2f× real time", result.frames, result.seconds, result.speed)
    for name, path in files.items():
        print(f"{name:9s} {path}")
    return 0


def _show(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.show()
    except Exception as exc:  # noqa: BLE001 — no viewer on a headless machine is not an error
        log.info("could not open a viewer (%s); the overlay is at %s", exc, path)


COMMAND = Command("segment", "segment one image (classes.png, overlay.png, legend.json, profiling.json) or video "
                  "(overlay.mp4, shares.csv, shares.json, profiling.json)",
                  _segment_args, _segment, exits_at_once=True)
