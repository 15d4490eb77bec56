"""`segdemo segment`: one image → classes.png, overlay.png, legend.json, profiling.json (the seed's trtinfer)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..model_source import DEFAULT_MODEL, MODEL_HELP
from . import Command

log = logging.getLogger("segdemo")


def _segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="image file (PNG, JPEG, WebP, …)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    p.add_argument("--backend", default="auto", help="auto (best available) or a backend name")
    p.add_argument("--precision", default="auto", choices=("auto", "fp16", "fp32"),
                   help="auto (default): fp16 on GPU backends (sensitive ops fp32, accuracy-checked), fp32 on CPU")
    p.add_argument("--build-dir", type=Path, default=None, help="artifact cache folder (default build/)")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity, 0..1 (default 0.5)")
    p.add_argument("--detailed", action="store_true",
                   help="add per-layer spans from the backend's profiler to profiling.json (slower)")
    p.add_argument("--no-show", action="store_true", help="do not open the overlay in an image viewer")


def _segment(args: argparse.Namespace) -> int:
    from ..decode import decode
    from ..pipeline import Session
    from ..spans import INFERENCE, SpanRecorder
    from ..trace import write_trace

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


def _show(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.show()
    except Exception as exc:  # noqa: BLE001 — no viewer on a headless machine is not an error
        log.info("could not open a viewer (%s); the overlay is at %s", exc, path)


COMMAND = Command("segment", "segment one image: classes.png, overlay.png, legend.json, profiling.json",
                  _segment_args, _segment)
