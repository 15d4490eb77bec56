"""`segdemo build`: build (or find cached) the TensorRT plan of the fused graph, with a progress bar; the build folder
is then prepared for the model (model.source.PREPARED): copied elsewhere, `--model <folder>` runs it without torch."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from ..backends.tensorrt.engine_build import PRECISIONS, default_backend, ensure_engine
from ..backends.tensorrt.flavour import FLAVOURS
from ..engine_cache import sidecar_path
from . import Command
from .options import add_backend, add_build_dir, add_model, add_precision

log = logging.getLogger(__name__)


class ConsoleProgress:
    """A one-line progress bar on stderr (a line per stage when stderr is not a terminal)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self._last = ("", -1)
        self._lock = threading.Lock()  # TensorRT reports progress from its own threads

    def __call__(self, fraction: float, message: str) -> None:
        """Show `fraction` (0..1) done with `message`; repeats of the same line are dropped."""
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        with self._lock:
            if (message, percent) == self._last:
                return
            changed = message != self._last[0]
            self._last = (message, percent)
            if self.tty:
                filled = self.width * percent // 100
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}%  {message[:60]:60s}")
                sys.stderr.flush()
            elif changed:
                print(f"  {percent:3d}%  {message}", file=sys.stderr)

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on its own."""
        if self.tty and self._last[1] >= 0:
            sys.stderr.write("\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The build subcommand's options."""
    add_model(p)
    add_precision(p, "fp16", "engine precision (default fp16)", PRECISIONS)
    add_backend(p, "auto", choices=("auto", *FLAVOURS),
                help="auto: tensorrt with a GPU where installed, else tensorrt-rtx (builds without a GPU)")
    p.add_argument("--target", default=None,
                   help="tensorrt-rtx only: comma-separated compute capabilities to build for, e.g. sm86,sm89 "
                        "(default: this GPU if supported, else TensorRT-RTX's portable default)")
    add_build_dir(p)
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")


def run(args: argparse.Namespace) -> int:
    """Export the graph if needed, find or build its plan, and print where it is and what it is."""
    from ..graph.export import ensure_onnx
    from ..graph.fp16 import probe_reference
    from ..model.source import resolve, write_prepared

    backend = default_backend() if args.backend == "auto" else args.backend
    targets = [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None
    bar = ConsoleProgress()
    start = time.perf_counter()
    try:
        source = resolve(args.model, args.build_dir)
        bar(0.0, "exporting ONNX")
        onnx_file, _ = ensure_onnx(source, args.build_dir)
        engine = ensure_engine(onnx_file, args.precision, backend, args.build_dir, targets, bar, args.force)
        probe_reference(onnx_file)  # kept beside the graph: the accuracy guard's reference without ONNX Runtime
        prepared = write_prepared(source, onnx_file, onnx_file.parent.parent)  # where --model finds its plans
    finally:
        bar.close()
    meta = engine.sidecar
    print(f"plan     {engine.plan}  {engine.plan.stat().st_size / 1e6:.1f} MB")
    print(f"sidecar  {sidecar_path(engine.plan)}")
    target = meta["target"].get("aot_targets") or f"{meta['target']['gpu']} ({meta['target']['compute_capability']})"
    print(f"engine   {meta['tensorrt']}, {meta['precision']}, target {target}")
    if engine.cache_hit:
        print(f"cache    hit: verified {meta['plan']['bytes'] / 1e6:.1f} MB in {engine.seconds:.2f} s "
              f"(built {meta['built_at']} in {meta['build_seconds']:.1f} s)")
    else:
        print(f"cache    miss: built in {engine.seconds:.1f} s (total {time.perf_counter() - start:.1f} s)")
    onnx_check = meta["accuracy"].get("onnx_vs_fp32")
    if onnx_check:
        print(f"accuracy {meta['precision']} graph agrees with fp32 on {onnx_check['agreement'] * 100:.3f} % of "
              f"pixels (ONNX Runtime); the engine itself is checked on its first load on a GPU")
    print(f"prepared {prepared} (copy {prepared.parent}; --model {prepared.parent} runs it without torch)")
    for note in source.notes:
        log.warning(note)
    return 0


COMMAND = Command("build", "build (or find cached) the TensorRT engine of the fused graph", add_arguments, run)
