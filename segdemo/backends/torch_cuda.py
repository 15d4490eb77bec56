"""PyTorch on CUDA: the fused computation replayed from CUDA graphs, for GPUs without TensorRT.

The network (normalise → SegFormer with the folded decode head → logits) is one graph, captured once for the
model's fixed input size. The post-processing (bilinear upsampling of the logits to the requested size, argmax)
is one graph per output-size bucket: sizes are rounded up to `BUCKET` pixels and the sampling coordinates are
inputs, so one replay serves every size in its bucket and the padding is cropped on download.
fp16 keeps LayerNorm, Softmax and the post-processing in fp32 (the TensorRT fp16 build's policy).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import build_dir
from ..export import normalisation
from ..preprocess import ModelInput
from ..spans import INFERENCE, LOAD, SpanRecorder

if TYPE_CHECKING:
    import torch

    from ..model_source import ModelSource

log = logging.getLogger(__name__)

BUCKET = 128  # output sizes are rounded up to a multiple of this; each bucket is one captured graph
COMPILE_ENV = "SEGDEMO_TORCH_COMPILE"  # "0": capture the network uncompiled (faster start, slower replays)
MAX_GRAPHED_SIDE = 2048  # larger outputs (only with a raised max_side) run the post-processing eagerly


def unavailable_reason() -> str | None:
    from ..gpu import torch_cuda_reason

    return torch_cuda_reason()


def bucket(size: tuple[int, int]) -> tuple[int, int]:
    """The padded output size whose graph serves `size`."""
    return tuple(-(-side // BUCKET) * BUCKET for side in size)


def source_coordinates(in_size: int, out_size: int, padded: int) -> np.ndarray:
    """Where each output pixel samples the input, exactly as torch's bilinear upsample (align_corners=False).

    Returned as grid_sample's normalised coordinates (align_corners=False, border padding clamps like upsample);
    entries past `out_size` repeat the last one and are cropped later.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.minimum(np.arange(padded, dtype=np.float32), np.float32(out_size - 1))
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    return ((np.float32(2.0) * src + np.float32(1.0)) / np.float32(in_size) - np.float32(1.0)).astype(np.float32)


def upsample_argmax(logits: torch.Tensor, grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
    """fp32 logits [1,C,h,w] → uint8 class ids [H,W] at the sampling coordinates (one fused gather, then argmax)."""
    import torch
    from torch.nn import functional

    height, width = grid_y.shape[0], grid_x.shape[0]
    grid = torch.stack((grid_x[None, :].expand(height, width), grid_y[:, None].expand(height, width)), dim=-1)
    upsampled = functional.grid_sample(logits, grid[None], mode="bilinear", padding_mode="border",
                                       align_corners=False)
    return upsampled[0].argmax(dim=0).to(torch.uint8)


class TorchCudaBackend:
    """CUDA-graph replays over static device buffers, fed and drained through pinned host memory."""

    name = "torch-cuda"
    device = "cuda"

    def __init__(self, source: ModelSource, spans: SpanRecorder, precision: str = "fp16", device: int = 0,
                 compile: bool | None = None, build: Path | None = None, **_: Any) -> None:
        import torch

        from ..network import folded_logits

        if precision not in ("fp16", "fp32"):
            raise ValueError(f"torch-cuda runs fp16 or fp32, not {precision}")
        self.torch = torch
        self.precision = precision
        self.cuda = torch.device("cuda", device)
        self.input_size = source.input_size
        self.lock = threading.Lock()  # one set of static buffers: requests take turns
        with spans.span("load weights", LOAD, backend=self.name, model=source.spec):
            model = source.load_model()
        with spans.span("prepare network", LOAD, backend=self.name, precision=precision):
            net = folded_logits(model).to(self.cuda)
            if precision == "fp16":
                net.half()
                for module in net.modules():
                    if isinstance(module, torch.nn.LayerNorm):
                        module.float()  # autocast runs layer_norm in fp32; keep its parameters exact too
            net.requires_grad_(False)
            self.net = self.eager_net = net
            self.compiled = os.environ.get(COMPILE_ENV, "1") != "0" if compile is None else compile
            if self.compiled:
                # Inductor fuses the ~1300 small kernels of b4 (LayerNorm with its fp32 casts, GELU, residual
                # adds, reshapes) to ~670: 6.6 → 3.7 ms on an H100. Its kernels are cached under build/.
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(build_dir(build) / "torchinductor"))
                self.net = torch.compile(net, dynamic=False)
            if precision == "fp32":
                # fp32 means fp32: no TF32 in matmuls and convolutions, so parity matches ONNX Runtime's.
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
            self.stream = torch.cuda.Stream(self.cuda)
            height, width = self.input_size
            self.host_pixels = torch.empty((1, height, width, 3), dtype=torch.uint8, pin_memory=True)
            self.pixels = torch.empty((1, height, width, 3), dtype=torch.uint8, device=self.cuda)
            # The same folded constants as the ONNX graph: x·scale + shift == (x/255 − mean)/std.
            scale, shift = normalisation()
            self.scale = torch.from_numpy(scale).view(1, 3, 1, 1).to(self.cuda)
            self.shift = torch.from_numpy(shift).view(1, 3, 1, 1).to(self.cuda)
        with spans.span("capture network graph", LOAD, backend=self.name, input=list(self.input_size),
                        compiled=self.compiled):
            self.pixels.copy_(torch.randint(0, 256, self.pixels.shape, dtype=torch.uint8, device=self.cuda))
            try:
                self.network_graph, self.logits = self._capture(self._network)
            except Exception as exc:  # noqa: BLE001 — no Triton/compiler here: the eager graph is still fast
                if not self.compiled:
                    raise
                log.warning("torch.compile failed (%s: %s); capturing the uncompiled network",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                self.net, self.compiled = self.eager_net, False
                self.network_graph, self.logits = self._capture(self._network)
        self.post: dict[tuple[int, int], dict[str, Any]] = {}
        # All post-processing graphs share one memory pool (each private pool would keep its own peak, ~2.5 GB
        # at 2048²) and one pair of pinned buffers: replays never overlap (self.lock) and each output is copied
        # out right after its replay, so what one graph leaves behind is never read after another runs.
        self.post_pool = torch.cuda.graph_pool_handle()
        self.host_grid = torch.empty(2 * MAX_GRAPHED_SIDE, dtype=torch.float32, pin_memory=True)
        self.host_classes = torch.empty(MAX_GRAPHED_SIDE * MAX_GRAPHED_SIDE, dtype=torch.uint8, pin_memory=True)

    def _network(self) -> torch.Tensor:
        """Static uint8 NHWC pixels → fp32 logits; autocast keeps LayerNorm and Softmax in fp32."""
        torch = self.torch
        x = self.pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16", cache_enabled=False):
            logits = self.net(x)
        return logits.float()

    def _capture(self, fn, pool=None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm `fn` up on the backend's stream (cuDNN/cuBLAS choices, lazy init), then capture it."""
        torch = self.torch
        with torch.inference_mode():
            self.stream.wait_stream(torch.cuda.current_stream(self.cuda))
            with torch.cuda.stream(self.stream):
                for _ in range(3):
                    fn()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
                out = fn()
            self.stream.synchronize()
        return graph, out

    def _post_graph(self, size: tuple[int, int]) -> dict[str, Any]:
        """The post-processing graph of the bucket holding `size`, captured on first use."""
        torch = self.torch
        padded = bucket(size)
        if padded not in self.post:
            height, width = padded
            entry: dict[str, Any] = {
                "grid_x": torch.zeros(width, dtype=torch.float32, device=self.cuda),
                "grid_y": torch.zeros(height, dtype=torch.float32, device=self.cuda),
            }
            entry["graph"], entry["classes"] = self._capture(
                lambda: upsample_argmax(self.logits, entry["grid_x"], entry["grid_y"]), pool=self.post_pool)
            self.post[padded] = entry
        return self.post[padded]

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Upload, replay the network and post-processing graphs, download; GPU stages become spans always."""
        torch = self.torch
        out_h, out_w = model_input.out_size
        with self.lock, spans.span("execute", INFERENCE, backend=self.name, out_size=[out_h, out_w]) as attrs:
            graphed = max(out_h, out_w) <= MAX_GRAPHED_SIDE
            entry = self._post_graph((out_h, out_w)) if graphed else None
            logit_h, logit_w = self.logits.shape[2:]
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                events = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
                self.host_pixels.numpy()[...] = model_input.pixels
                host_start = time.perf_counter_ns()
                events[0].record(self.stream)
                self.pixels.copy_(self.host_pixels, non_blocking=True)
                if entry is not None:
                    width, height = entry["grid_x"].shape[0], entry["grid_y"].shape[0]
                    grid = self.host_grid.numpy()
                    grid[:width] = source_coordinates(logit_w, out_w, width)
                    grid[width:width + height] = source_coordinates(logit_h, out_h, height)
                    entry["grid_x"].copy_(self.host_grid[:width], non_blocking=True)
                    entry["grid_y"].copy_(self.host_grid[width:width + height], non_blocking=True)
                events[1].record(self.stream)
                self.network_graph.replay()
                events[2].record(self.stream)
                if entry is not None:
                    entry["graph"].replay()
                    # Contiguous on both sides, so the download is one plain asynchronous copy.
                    classes = entry["classes"][:out_h, :out_w].contiguous()
                    host = self.host_classes[: out_h * out_w].view(out_h, out_w)
                else:  # beyond the graphed buckets: the same computation, launched eagerly
                    grid_x = torch.from_numpy(source_coordinates(logit_w, out_w, out_w)).to(self.cuda)
                    grid_y = torch.from_numpy(source_coordinates(logit_h, out_h, out_h)).to(self.cuda)
                    classes = upsample_argmax(self.logits, grid_x, grid_y)
                    host = torch.empty((out_h, out_w), dtype=torch.uint8, pin_memory=True)
                events[3].record(self.stream)
                host.copy_(classes, non_blocking=True)
                events[4].record(self.stream)
                events[4].synchronize()
                result = host.numpy().copy()  # the pinned buffer is reused by the next request
            attrs.update(graphed=entry is not None, bucket=list(bucket((out_h, out_w))))
            self._device_spans(spans, events, host_start)
        return result

    def _device_spans(self, spans: SpanRecorder, events: list, host_start: int) -> None:
        """GPU times from CUDA events, placed on the host clock from the moment the first event was queued."""
        for name, begin, end in (("upload", 0, 1), ("network", 1, 2), ("postprocess", 2, 3), ("download", 3, 4)):
            start_ns = host_start + int(events[0].elapsed_time(events[begin]) * 1e6)
            spans.add_device(f"gpu {name}", INFERENCE, start_ns, int(events[begin].elapsed_time(events[end]) * 1e6),
                             backend=self.name)

    def close(self) -> None:
        """Drop graphs, network and buffers so the caching allocator can hand the memory back."""
        with self.lock:
            self.post.clear()
            for attr in ("network_graph", "net", "eager_net", "logits", "pixels", "host_pixels", "scale", "shift",
                         "post_pool", "host_grid", "host_classes"):
                setattr(self, attr, None)
            self.torch.cuda.empty_cache()


def create(onnx_file: Path, spans: SpanRecorder, source: ModelSource | None = None, **options) -> TorchCudaBackend:
    if source is None:
        raise ValueError("torch-cuda builds from the model source: pass source=")
    return TorchCudaBackend(source, spans, **options)
