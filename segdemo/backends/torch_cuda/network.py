"""The network torch-cuda's graphs replay: loaded at start (trace, exported program or AOTInductor package), then its
batch graphs and torch.compile's twins made in the background and swapped in under the backend's lock."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...artifacts import resolve_build_dir
from ...profiling.spans import LOAD, SpanRecorder
from .aot import PROGRAM, SCRIPT, batch_script, compiled_network, describe, pixel_network
from .graphs import BATCH_BUCKETS, BatchGraph, batch_bucket, capture_network

if TYPE_CHECKING:
    import torch

    from ...model.source import ModelSource

log = logging.getLogger(__name__)

NAME = "torch-cuda"
COMPILE_ENV = "SEGDEMO_TORCH_COMPILE"  # "0": capture the network uncompiled (faster start, slower replays)
AOT_ENV = "SEGDEMO_TORCH_AOT"  # "1": the compiled network from an AOTInductor package cached in build/compiled
MIN_COMPILED_AGREEMENT = 0.99  # a compiled graph replaces the uncompiled one only if its argmax agrees this well


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


class Network:
    """The loaded network, its batch-1 graph over static pixels and logits, and the batch buckets' graphs."""

    graph: torch.cuda.CUDAGraph | None  # set by capture; None: an AOTInductor network launched per request

    def __init__(self, source: ModelSource, spans: SpanRecorder, precision: str, device: torch.device,
                 wanted: bool, lock: threading.Lock, closing: threading.Event, build_dir: Path | None = None,
                 progress: Callable[[float, str], None] | None = None) -> None:
        """Load what the first graph replays; `wanted`: torch.compile it (at once with AOT, else in the background)."""
        import torch

        self.torch, self.precision, self.cuda = torch, precision, device
        self.input_size = source.input_size
        self.lock, self.closing = lock, closing  # the backend's: graphs are swapped between its requests
        self.compiled = False  # whether the graphs replay compiled code (at once with AOT, else once compiled)
        self.package: dict[str, Any] | None = None
        self.program: dict[str, Any] | None = None  # facts of the exported program and of its trace, once loaded
        self.script: dict[str, Any] | None = None
        if precision == "fp32":
            # fp32 means fp32: no TF32 in matmuls and convolutions, so parity matches ONNX Runtime's.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        # cuDNN's algorithm search for each convolution of b4 costs start-up time: the batch-1 graph a restart
        # replays first takes cuDNN's heuristics; the background's graphs (batches, compiled) search.
        torch.backends.cudnn.benchmark = False
        if wanted:
            # Inductor fuses the network's many small kernels (LayerNorm with its fp32 casts, GELU, residual adds,
            # reshapes; docs/benchmarks.md). Its kernels are cached under build/.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(resolve_build_dir(build_dir) / "torchinductor"))
        self.aot = wanted and os.environ.get(AOT_ENV, "0") == "1"
        if self.aot:
            inductor_config()
            # Opt-in: aoti_load_package segfaulted on a lent GPU (docs/benchmarks.md) — a crash no fallback can
            # catch — so the exported program is the default.
            try:
                self.net, self.package = compiled_network(
                    source, precision, self.cuda, build_dir, spans, lambda: self._eager_network(source, spans),
                    progress)
                self.compiled = True
            except Exception as exc:  # noqa: BLE001 — then the exported program, as without the package
                log.warning("AOTInductor compilation failed (%s: %s); using the exported program",
                            type(exc).__name__, _first_line(exc))
                self.aot = False
        self.eager_net: torch.nn.Module | None = None  # the exported program (loaded in the background), for batches
        self.exported = functools.partial(self._program_network, source, spans, build_dir, progress)
        self.artifact = functools.partial(compiled_network, source, precision, self.cuda, build_dir, spans,
                                          self.exported, progress)  # (kind) → a cached trace of the program
        if not self.aot:
            self.net = self._startup_network(source, spans, build_dir, progress)
        self.batch_graphs: dict[int, BatchGraph] = {}  # batch bucket → its network graph, once captured

    def capture(self, stream: torch.cuda.Stream, spans: SpanRecorder) -> None:
        """The batch-1 graph over static pixels and logits, replayed on `stream` (launched per request if an
        AOTInductor network cannot be captured)."""
        torch = self.torch
        self.stream = stream
        height, width = self.input_size
        self.pixels = torch.empty((1, height, width, 3), dtype=torch.uint8, device=self.cuda)
        with spans.span("capture network graph", LOAD, backend=NAME, input=list(self.input_size),
                        compiled=self.compiled) as attrs:
            self.pixels.copy_(torch.randint(0, 256, self.pixels.shape, dtype=torch.uint8, device=self.cuda))
            try:
                self.graph, self.logits = capture_network(self.stream, self.cuda, self.net, self.pixels)
            except Exception as exc:  # noqa: BLE001 — see below
                if not self.aot:
                    raise
                log.warning("capturing the AOTInductor network in a CUDA graph failed (%s: %s)",
                            type(exc).__name__, _first_line(exc))
                torch.cuda.synchronize(self.cuda)
                self.graph, self.logits = None, self.net(self.pixels).clone()  # launched per request
            attrs["graphed"] = self.graph is not None

    def replay(self) -> None:
        """The network over the static pixels into the static logits the post-processing graphs read."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits.copy_(self.net(self.pixels))

    def batch_graph(self, count: int) -> BatchGraph | None:
        """The graph of the smallest captured batch bucket holding `count` requests (None before any is)."""
        return next((graph for size, graph in sorted(self.batch_graphs.items()) if size >= count), None)

    def capture_batch(self, spans: SpanRecorder, max_batch: int) -> None:
        """The graph of `max_batch`'s bucket only, now, from its own cached trace (a one-shot run: no background;
        smaller batches ride in it, their padding rows computing what is never read)."""
        size = batch_bucket(max_batch)
        with spans.span("capture batch graphs", LOAD, backend=NAME, max_batch=max_batch, buckets=[size]):
            script, _ = self.artifact(kind=batch_script(size))
            pixels = self.torch.randint(0, 256, (size, *self.input_size, 3), dtype=self.torch.uint8,
                                        device=self.cuda)
            graph, logits = capture_network(self.stream, self.cuda, script, pixels)
            # The graph replays the trace's weights in place: the entry keeps the trace (nothing else does).
            self.batch_graphs[size] = BatchGraph(size, pixels, graph, logits, script)

    def _eager_network(self, source: ModelSource, spans: SpanRecorder) -> torch.nn.Module:
        """The network from the model's weights (transformers), on the GPU at this precision, uint8 pixels in."""
        torch = self.torch
        from ...model.network import folded_logits

        with spans.span("load weights", LOAD, backend=NAME, model=source.spec):
            model = source.load_model()
        with spans.span("prepare network", LOAD, backend=NAME, precision=self.precision):
            net = folded_logits(model).to(self.cuda)
            if self.precision == "fp16":
                net.half()
                for module in net.modules():
                    if isinstance(module, torch.nn.LayerNorm):
                        module.float()  # autocast runs layer_norm in fp32; keep its parameters exact too
            net.requires_grad_(False)
            # Channels-last weights match the token layout ([B, H·W, C] viewed as NCHW is NHWC in memory): cuDNN
            # then runs the depthwise and reduction convolutions without layout copies.
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as in aot._load_program
            return pixel_network(net, self.precision)

    def _startup_network(self, source: ModelSource, spans: SpanRecorder, build_dir: Path | None,
                         progress: Callable[[float, str], None] | None) -> Callable:
        """The exported program's batch-1 TorchScript trace (made on the first start); the program if untraceable."""
        try:
            # The trace loads in C++, far sooner than the program deserialises in Python (docs/benchmarks.md).
            script, self.script = compiled_network(source, self.precision, self.cuda, build_dir, spans,
                                                   self.exported, progress, SCRIPT)
            return script
        except Exception as exc:  # noqa: BLE001 — the program runs the same computation, only starts are slower
            log.warning("tracing the network failed (%s: %s); starting from the exported program",
                        type(exc).__name__, _first_line(exc))
            return self.exported()

    def _program_network(self, source: ModelSource, spans: SpanRecorder, build_dir: Path | None,
                         progress: Callable[[float, str], None] | None) -> torch.nn.Module:
        """The exported program from build/compiled (made on the first start), or the transformers model if
        torch.export cannot trace it; loaded once."""
        if self.eager_net is None:
            try:
                self.eager_net, self.program = compiled_network(
                    source, self.precision, self.cuda, build_dir, spans, lambda: self._eager_network(source, spans),
                    progress, PROGRAM)
            except Exception as exc:  # noqa: BLE001 — an untraceable model still runs, only its starts stay slow
                log.warning("torch.export of the network failed (%s: %s); running the transformers model",
                            type(exc).__name__, _first_line(exc))
                self.eager_net = self._eager_network(source, spans)
        return self.eager_net

    def load_in_background(self, spans: SpanRecorder, compile: bool, max_batch: int) -> None:
        """Load the exported program, capture its graph for each batch bucket, then compile (if `compile`)."""
        self.torch.backends.cudnn.benchmark = True  # see __init__
        try:
            program = self.exported()
            if max_batch > 1:
                side = self.torch.cuda.Stream(self.cuda)
                with spans.span("capture batch graphs", LOAD, backend=NAME, max_batch=max_batch) as attrs:
                    for size in BATCH_BUCKETS:
                        if size <= batch_bucket(max_batch) and not self.closing.is_set():
                            pixels = self.torch.randint(0, 256, (size, *self.input_size, 3), dtype=self.torch.uint8,
                                                        device=self.cuda)
                            # One run on a stream of its own first, outside the lock: cuDNN's autotuning for this
                            # shape happens here, beside the requests, not while they wait for the capture (the
                            # engine tier's requests waited up to 4.9 s before this).
                            with self.torch.inference_mode(), self.torch.cuda.stream(side):
                                program(pixels)
                            side.synchronize()
                            with self.lock:
                                graph, logits = capture_network(self.stream, self.cuda, program, pixels)
                                self.batch_graphs[size] = BatchGraph(size, pixels, graph, logits)
                    attrs["buckets"] = sorted(self.batch_graphs)
        except Exception:  # noqa: BLE001 — batches then run one image at a time
            log.exception("loading the exported program in the background failed; batches run image by image")
            return
        if compile and not self.closing.is_set():
            self._compile(program)

    def _compile(self, program: Callable) -> None:
        """torch.compile the network, then swap each graph (batch 1 first, then the batch buckets) for a compiled
        one whose argmax agrees with the uncompiled one's; on any failure the uncompiled graphs stay."""
        torch = self.torch
        start = time.perf_counter()
        try:
            inductor_config()
            # Every bucket compiled for its own static shape: a dynamic batch dimension, which dynamo would choose
            # at the second shape, gave much slower kernels (docs/benchmarks.md). Batch 1 first (a lone visitor),
            # then the largest buckets (a crowd).
            compiled = torch.compile(program, dynamic=False)
            stream = torch.cuda.Stream(self.cuda)
            targets = [(0, self.pixels, self.logits)] + [
                (size, entry.pixels, entry.logits) for size, entry in sorted(self.batch_graphs.items(), reverse=True)]
            for size, pixels, logits in targets:
                sample = torch.randint(0, 256, pixels.shape, dtype=torch.uint8, device=self.cuda)
                with torch.inference_mode(), torch.cuda.stream(stream):
                    got, want = compiled(sample).argmax(1), program(sample).argmax(1)  # compiles: seconds
                    agreement = float((got == want).float().mean())
                stream.synchronize()
                if agreement < MIN_COMPILED_AGREEMENT:
                    raise RuntimeError(f"its class map agrees {agreement:.2%} with the uncompiled network's")
                with self.lock:
                    if self.closing.is_set():
                        return
                    graph, _ = capture_network(self.stream, self.cuda, compiled, pixels, logits)
                    if size:
                        self.batch_graphs[size].graph = graph
                    else:
                        self.graph = graph
                        self.net, self.compiled = compiled, True
        except Exception as exc:  # noqa: BLE001 — e.g. no Triton or C compiler here: the uncompiled graphs stay
            log.warning("torch.compile of the network failed (%s: %s); requests keep the uncompiled graphs",
                        type(exc).__name__, _first_line(exc))
            return
        log.info("network compiled in the background in %.1f s; requests use it from now on",
                 time.perf_counter() - start)

    def cache_fact(self) -> str:
        """The Engine tab's line on where the network came from."""
        return "; ".join([f"AOTInductor package {describe(self.package)}"] if self.package else [
            *([f"traced network {describe(self.script)}"] if self.script else []),
            *([f"exported program {describe(self.program)}"] if self.program else []),
            "Inductor kernels in $TORCHINDUCTOR_CACHE_DIR"])

    def close(self) -> None:
        """Drop graphs, networks and static tensors (callers hold the lock)."""
        self.batch_graphs.clear()
        for attr in ("graph", "net", "eager_net", "logits", "pixels"):
            setattr(self, attr, None)


def inductor_config() -> None:
    """Programmatic dependent launch (Hopper and later; ignored before): each kernel's prologue overlaps the tail
    of the one before, which pays for a graph of many short kernels (docs/benchmarks.md)."""
    import torch._inductor.config as config

    config.triton.enable_pdl = True
