"""`segdemo doctor`: versions, GPU, the backend ladder with reasons, and a tiny end-to-end self-test per backend (where
torch, transformers and ONNX Runtime can export and check it: a TensorRT-only install reports the rest)."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
from pathlib import Path

from . import Command
from .options import add_build_dir


def _doctor_args(p: argparse.ArgumentParser) -> None:
    add_build_dir(p, help="artifact folder for the self-test (default: a temporary folder)")


def _doctor(args: argparse.Namespace) -> int:
    from .. import backends
    from ..doctor import SELF_TEST_MODEL, rtx_build_check, self_test, versions
    from ..gpu import detect
    from ..graph.export import ensure_onnx
    from ..graph.fp16 import PROBE_OUT_SIZE, probe_reference
    from ..model.source import resolve

    print("segdemo doctor")
    print(f"  platform      {platform.platform()}")
    for name, version in versions().items():
        print(f"  {name:13s} {version}")
    gpu = detect()
    print(f"  gpu           {gpu.describe() if gpu else 'none'}")
    print("\nbackend ladder (--backend auto takes the first usable one)")
    rungs = backends.ladder()
    chosen = next((r.name for r in rungs if r.available), None)
    for rung in rungs:
        arrow, state = "→" if rung.name == chosen else " ", "usable" if rung.available else "skipped"
        print(f"  {arrow} {rung.name:13s} {state:8s} {'' if rung.available else rung.reason}".rstrip())
    print(f"\nself-test ({SELF_TEST_MODEL}, probe image → class map {PROBE_OUT_SIZE[0]}×{PROBE_OUT_SIZE[1]})")
    results: dict[str, bool] = {}
    absent = [name for name in ("torch", "transformers", "onnxruntime") if importlib.util.find_spec(name) is None]
    if absent:  # a TensorRT-only install: it runs prepared folders, and has nothing to export or check against
        print(f"  not run: it exports {SELF_TEST_MODEL} and checks it on ONNX Runtime, and {', '.join(absent)} "
              f"{'is' if len(absent) == 1 else 'are'} not installed (a prepared folder runs as --model <folder>)")
    else:
        with tempfile.TemporaryDirectory(prefix="segdemo-doctor-") as tmp:
            build_dir = args.build_dir or Path(tmp)
            source = resolve(SELF_TEST_MODEL)
            onnx_file, _ = ensure_onnx(source, build_dir)
            reference = probe_reference(onnx_file)[0]
            for rung in rungs:
                if rung.available:
                    results[rung.name], line = self_test(rung.name, onnx_file, source, reference)
                else:
                    line = "not run (skipped above)"
                print(f"  {rung.name:13s} {line}")
            if importlib.util.find_spec("tensorrt_rtx") is not None:
                print(f"  {'tensorrt-rtx':13s} {rtx_build_check(onnx_file, build_dir)} [build check]")
    ok = chosen is not None and results.get(chosen, True)  # usable, and its self-test (where run) passed
    note = " (not self-tested)" if ok and chosen not in results else ""
    print(f"\n{'OK' if ok else 'PROBLEM'}: --backend auto uses {chosen or 'nothing'}{note}"
          f"{' and its self-test failed' if chosen in results and not ok else ''}")
    return 0 if ok else 1


COMMAND = Command("doctor", "print versions, GPU and backend ladder, and self-test each usable backend", _doctor_args,
                  _doctor)
