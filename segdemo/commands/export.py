"""`segdemo export`: write the fused ONNX graph (the seed's trtconverter.py, first half), and record the folder as
prepared for the model (model.source.PREPARED): `--model <folder>` then runs it without torch."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from . import Command
from .options import add_model

log = logging.getLogger("segdemo")


def _export_args(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--out", type=Path, default=None, help="artifact folder (default build/, or $SEGDEMO_BUILD_DIR)")


def _export(args: argparse.Namespace) -> int:
    from ..graph.export import ensure_onnx
    from ..graph.fp16 import probe_reference
    from ..model.source import resolve, write_prepared

    start = time.perf_counter()
    source = resolve(args.model, args.out)
    path, hit = ensure_onnx(source, args.out)
    probe_reference(path)  # kept beside the graph: the accuracy guard's reference where ONNX Runtime is not installed
    print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  {time.perf_counter() - start:.1f} s"
          f"{'  (cached)' if hit else ''}")
    print(f"{write_prepared(source, path, path.parent.parent)}  (--model {path.parent.parent} runs it without torch)")
    for note in source.notes:
        log.warning(note)
    return 0


COMMAND = Command("export", "write the fused ONNX graph (uint8 image in, uint8 class map out)", _export_args, _export)
