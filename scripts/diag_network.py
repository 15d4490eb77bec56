"""The batched network's GPU time per bucket (device diagnosis for issue 14): the session's own graphs (compiled
with a dynamic batch dimension), then a static-shape compilation of the largest bucket, each replayed in a CUDA
graph and timed with events."""

import time

import torch

from segdemo.backends.torch_cuda.graphs import capture_network
from segdemo.pipeline import Session


def timed(graph, iters: int = 30) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        graph.replay()
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


with Session("random:b4", "torch-cuda", "fp16", warm_up="now", max_batch=32) as session:
    session.settle(timeout=900)
    backend = session.backend
    print("facts:", backend.facts(), flush=True)
    for size, entry in sorted(backend.network.batch_graphs.items()):
        ms = timed(entry.graph)
        print(f"session graph bucket {size:2d}: {ms:7.2f} ms, {size / ms * 1e3:7.1f} img/s", flush=True)
    program = backend.network.exported()
    for size in (16, 32):
        pixels = backend.network.batch_graphs[size].pixels
        t = time.perf_counter()
        static = torch.compile(program, dynamic=False)
        with torch.inference_mode():
            static(pixels)
            torch.cuda.synchronize()
            print(f"static compile {size}: {time.perf_counter() - t:.1f} s", flush=True)
            graph, _ = capture_network(backend.stream, backend.cuda, static, pixels)
        ms = timed(graph)
        print(f"static-compiled bucket {size:2d}: {ms:7.2f} ms, {size / ms * 1e3:7.1f} img/s", flush=True)
