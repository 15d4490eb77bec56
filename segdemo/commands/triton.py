"""`segdemo triton export|serve`: a Triton model repository of the fused graph, and a local server for it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from . import Command
from .options import add_build_dir, add_model, add_precision

log = logging.getLogger("segdemo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`triton export` and `triton serve`, each with its own options."""
    from ..triton.repository import DEFAULT_NAME, DEFAULT_VARIANTS, VARIANTS

    sub = p.add_subparsers(dest="triton_command", required=True, metavar="{export,serve}")
    export = sub.add_parser("export", help="write a Triton model repository per variant (OUT/<variant>/<name>)",
                            description="write a Triton model repository per variant (OUT/<variant>/<name>)")
    add_model(export)
    export.add_argument("--out", type=Path, required=True, help="folder for the repositories")
    export.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)}; "
                             f"tensorrt only when segdemo build made a TensorRT plan of this graph; session serves "
                             f"segdemo's own session, where segdemo is installed)")
    export.add_argument("--name", default=DEFAULT_NAME, help=f"the model's name on the server (default {DEFAULT_NAME})")
    export.add_argument("--max-batch", type=int, default=8,
                        help="python and session variants: most queued requests handed to one execute (default 8)")
    export.add_argument("--instances", type=int, default=1, help="model instances per server (default 1)")
    export.add_argument("--backend", default="auto",
                        help="session variant: the backend it runs (default auto: the best one on this machine)")
    add_precision(export, help="tensorrt variant: the plan's precision (auto: fp16); session variant: its backend's "
                               "(auto: the backend's default); python and onnxruntime run fp32")
    add_build_dir(export)
    export.set_defaults(triton_run=_export)
    serve = sub.add_parser("serve", help="run the nvidia-pytriton wheel's tritonserver on a repository",
                           description="run the nvidia-pytriton wheel's tritonserver on a repository (Ctrl-C stops)")
    serve.add_argument("repository", type=Path, help="e.g. OUT/python from segdemo triton export")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    serve.add_argument("--http-port", type=int, default=8000, help="default 8000")
    serve.set_defaults(triton_run=_serve)


def _export(args: argparse.Namespace) -> int:
    from .. import backends
    from ..errors import SegdemoError
    from ..graph.export import ensure_onnx
    from ..model.source import resolve
    from ..triton.repository import export_repository

    start = time.perf_counter()
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if args.precision == "int8" and "tensorrt" in variants:
        raise SegdemoError("the tensorrt variant's plans are fp16 or fp32, not int8")
    session_runs = ("auto", "auto")
    if "session" in variants:  # resolved here, on the machine that will serve it, so clients see what runs
        name, _ = backends.choose(args.backend)
        session_runs = (name, backends.precision_for(name, args.precision))
    source = resolve(args.model, args.build_dir)
    # The session variant of a backend that builds from the model (torch-cuda) needs no graph: no export.
    reads_graph = set(variants) - {"session"} or "session" in variants and backends.reads_graph(session_runs[0])
    onnx_file = ensure_onnx(source, args.build_dir)[0] if reads_graph else None
    plan_precision = "fp16" if args.precision == "auto" else args.precision
    done = export_repository(source, onnx_file, args.out, variants, args.name, args.max_batch, args.instances,
                             args.build_dir, plan_precision, session_runs)
    for item in done:
        print(item.note)
    served = [item for item in done if item.repository is not None]
    if served:
        print(f"done in {time.perf_counter() - start:.1f} s; serve one, e.g.: segdemo triton serve "
              f"{served[0].repository}  then  --backend triton://127.0.0.1:8001/{args.name}")
    for note in source.notes:
        log.warning(note)
    return 0 if served else 1


def _serve(args: argparse.Namespace) -> int:
    from ..triton.server import TritonServer

    # `kill` or a service manager's stop ends us through SIGTERM: unwind, so the server is stopped with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with TritonServer(args.repository, args.host, args.http_port, args.grpc_port) as server:
        print(f"tritonserver ready on {args.repository}: gRPC {server.grpc_address}, HTTP {server.http_address}; "
              f"Ctrl-C stops it", flush=True)
        process = server.process
        assert process is not None  # started on entering the with block
        try:
            while process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        print(f"tritonserver exited with code {process.returncode}")
        return 1


COMMAND = Command("triton", "Triton Inference Server: export a model repository, or serve one locally",
                  add_arguments, lambda args: args.triton_run(args))
