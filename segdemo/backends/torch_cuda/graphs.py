"""CUDA graph capture for torch-cuda, and the graphs it keeps: one network graph per batch bucket and one
post-processing graph (upsample + argmax) per output-size bucket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .ops import bucket, source_coordinates, upsample_argmax

if TYPE_CHECKING:
    import torch

MAX_GRAPHED_SIDE = 2048  # larger outputs (only with a raised max_side) run the post-processing eagerly
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)  # batches run in the smallest bucket that holds them


# What one more batch call costs beyond its rows, in rows: a batch of 9 in bucket 16 computes 7 rows of padding, where
# 8 + 1 computes none for one more call (docs/benchmarks.md, the engine tier's account per batch size).
CALL_COST_ROWS = 2


def batch_bucket(count: int) -> int:
    """The batch bucket holding `count` requests."""
    return next((size for size in BATCH_BUCKETS if size >= count), count)


def bucket_split(count: int, buckets: list[int]) -> list[int]:
    """The batch sizes to run `count` requests in, given the captured buckets: one padded bucket, or the largest
    bucket below `count` full and the rest split alike, whichever computes fewer rows (each call costing
    CALL_COST_ROWS more); [count] when no bucket is captured."""
    sizes = sorted(buckets)

    def plan(n: int) -> tuple[float, list[int]]:
        holding = next((size for size in sizes if size >= n), None)
        best: tuple[float, list[int]] = (float(holding) if holding else float("inf"), [n])
        below = max((size for size in sizes if size < n), default=None)
        if below is not None:
            rows, parts = plan(n - below)
            if below + CALL_COST_ROWS + rows < best[0]:
                best = (below + CALL_COST_ROWS + rows, [below, *parts])
        return best

    return plan(count)[1] if count > 0 else []


@dataclass(eq=False)
class BatchGraph:
    """The network captured over one batch bucket's static pixels; `graph` is swapped for its compiled twin."""

    bucket: int
    pixels: torch.Tensor
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor
    net: Any = None  # what the graph replays, where nothing else keeps it (and so its weights) alive


@dataclass(eq=False)
class PostGraph:
    """One output-size bucket's post-processing graph: sampling coordinates in, padded class ids out."""

    grid_x: torch.Tensor
    grid_y: torch.Tensor
    graph: torch.cuda.CUDAGraph
    classes: torch.Tensor
    uploaded: tuple[int, int] | None = None  # the output size whose coordinates grid_x/grid_y hold


def capture(stream: torch.cuda.Stream, device: torch.device, fn: Callable[[], Any],
            pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm `fn` up on `stream` (cuDNN/cuBLAS choices, lazy init), then capture it."""
    import torch

    with torch.inference_mode():
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            out = fn()
        stream.synchronize()
    return graph, out


def capture_network(stream: torch.cuda.Stream, device: torch.device, net: Callable, pixels: torch.Tensor,
                    logits: torch.Tensor | None = None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A CUDA graph of `net` over static `pixels` writing into `logits` (made here if None)."""
    import torch

    if logits is None:
        # Outside the graph's memory pool, so the graph can be swapped for another one later.
        with torch.inference_mode(), torch.cuda.stream(stream):
            logits = torch.empty_like(net(pixels))
        stream.synchronize()
    graph, _ = capture(stream, device, lambda: logits.copy_(net(pixels)))
    return graph, logits


class PostGraphs:
    """The post-processing graph of each output-size bucket over the network's static logits, captured on first use."""

    def __init__(self, stream: torch.cuda.Stream, device: torch.device, logits: torch.Tensor) -> None:
        import torch

        self.torch, self.stream, self.cuda, self.logits = torch, stream, device, logits
        self.entries: dict[tuple[int, int], PostGraph] = {}
        # One memory pool (a private pool per graph would keep its own peak, see ops.upsample_argmax) and one pair
        # of pinned buffers for all: replays never overlap (the backend's lock) and each output is copied out right
        # after its replay, so what one graph leaves behind is never read after another runs.
        self.pool = torch.cuda.graph_pool_handle()
        self.host_grid = torch.empty(2 * MAX_GRAPHED_SIDE, dtype=torch.float32, pin_memory=True)
        self.host_classes = torch.empty(MAX_GRAPHED_SIDE * MAX_GRAPHED_SIDE, dtype=torch.uint8, pin_memory=True)

    def get(self, size: tuple[int, int]) -> PostGraph:
        """The graph of the bucket holding `size`, captured on first use."""
        torch = self.torch
        padded = bucket(size)
        if padded not in self.entries:
            height, width = padded
            grid_x = torch.zeros(width, dtype=torch.float32, device=self.cuda)
            grid_y = torch.zeros(height, dtype=torch.float32, device=self.cuda)
            graph, classes = capture(self.stream, self.cuda, lambda: upsample_argmax(self.logits, grid_x, grid_y),
                                     pool=self.pool)
            self.entries[padded] = PostGraph(grid_x, grid_y, graph, classes)
        return self.entries[padded]

    def upload_grid(self, entry: PostGraph, out_size: tuple[int, int], staged: bool = True) -> None:
        """Sampling coordinates of `out_size` into the graph's inputs, asynchronously (`staged`: through host_grid)."""
        if entry.uploaded == out_size:  # still there from the bucket's previous request
            return
        entry.uploaded = out_size
        out_h, out_w = out_size
        logit_h, logit_w = self.logits.shape[2:]
        width, height = entry.grid_x.shape[0], entry.grid_y.shape[0]
        # Several images of a batch upload theirs in turn, which the one staging buffer cannot hold: each gets a
        # pinned buffer of its own, which torch's caching host allocator keeps until its copy has run.
        pinned = self.host_grid if staged else \
            self.torch.empty(width + height, dtype=self.torch.float32, pin_memory=True)
        grid = pinned.numpy()
        grid[:width] = source_coordinates(logit_w, out_w, width)
        grid[width:width + height] = source_coordinates(logit_h, out_h, height)
        entry.grid_x.copy_(pinned[:width], non_blocking=True)
        entry.grid_y.copy_(pinned[width:width + height], non_blocking=True)

    def close(self) -> None:
        """Drop the graphs, their pool and pinned buffers (callers hold the backend's lock)."""
        self.entries.clear()
        self.pool = self.host_grid = self.host_classes = self.logits = None  # type: ignore[assignment]  # closed
