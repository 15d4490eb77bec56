"""`python -m segdemo …`: export the fused graph, segment images (the seed's trtconverter/trtinfer)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import SegdemoError
from .model_source import DEFAULT_MODEL, PRESETS

log = logging.getLogger("segdemo")

MODEL_HELP = f"Hugging Face id, local directory, or one of {', '.join(PRESETS)} (default {DEFAULT_MODEL})"

# Subcommands register here: name → (add_arguments, run). Later features add their own modules.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args) -> exit code` as subcommand `name`."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return register

from . import bench  # noqa: E402,F401 — its @command registers bench (needs `command` above)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", type=Path, default=None, help="artifact folder (default build/, or $SEGDEMO_BUILD_DIR)")


@command("export", "write the fused ONNX graph (uint8 image in, uint8 class map out)", _export_args)
def _export(args: argparse.Namespace) -> int:
    from .export import ensure_onnx
    from .model_source import resolve

    start = time.perf_counter()
    source = resolve(args.model)
    path, hit = ensure_onnx(source, args.out)
    print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  {time.perf_counter() - start:.1f} s"
          f"{'  (cached)' if hit else ''}")
    for note in source.notes:
        log.warning(note)
    return 0


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


@command("segment", "segment one image: classes.png, overlay.png, legend.json, profiling.json", _segment_args)
def _segment(args: argparse.Namespace) -> int:
    from .decode import decode
    from .pipeline import Session
    from .spans import INFERENCE, SpanRecorder
    from .trace import write_trace

    spans = SpanRecorder()
    with spans.span("decode", INFERENCE, file=args.image.name):
        image = decode(args.image)  # a bad image fails here, before any model loading
    session = Session(args.model, args.backend, args.precision, args.build_dir)
    result = session.segment(image, spans, detailed=args.detailed)
    files = result.write(args.out, args.opacity)
    files["profiling"] = write_trace(args.out / "profiling.json", session.trace_spans(spans), result.info)
    for entry in result.legend[:5]:
        log.info("  %-20s %5.1f %%", entry.name, entry.share * 100)
    for name, path in files.items():
        print(f"{name:8s} {path}")
    if not args.no_show:
        _show(files["overlay"])
    session.close()
    return 0


def _show(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.show()
    except Exception as exc:  # noqa: BLE001 — no viewer on a headless machine is not an error
        log.info("could not open a viewer (%s); the overlay is at %s", exc, path)


from . import doctor, engine_build  # noqa: E402,F401 — modules whose @command registers build, doctor


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="segdemo", description="SegFormer → fused ONNX → TensorRT demo tools")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return top


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.run(args)
    except SegdemoError as exc:
        print(f"segdemo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segdemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
