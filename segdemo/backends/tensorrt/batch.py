"""Batched TensorRT runs: the network plan once for the whole batch, then the post-processing plan once per image at
that image's output size — the two engines the loader deserialises for max_batch > 1 (`LoadedEngine.post`).

`TensorRTBatchRunner` binds both once: an execution context each, one CUDA stream, device buffers for a full batch
(`cuda`: no PyTorch). Every address handed to TensorRT is 256-byte aligned, as cudaMalloc's own are.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ...errors import SegdemoError
from ...graph.batched import LOGITS
from ...graph.export import INPUT_IMAGE, INPUT_SIZE, OUTPUT_CLASSES
from ...image.preprocess import ModelInput
from ...profiling.spans import INFERENCE, SpanRecorder
from .cuda import DeviceBuffer, Event, PinnedBuffer, Stream
from .loader import LoadedEngine
from .timing import attach_profiler, device_spans, layer_profiler, layer_spans

ALIGNMENT = 256  # bytes: what cudaMalloc guarantees, so TensorRT's kernels may assume it of any tensor address


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


class TensorRTBatchRunner:
    """Runs a batch through the network engine, then each image through the post-processing engine at its size."""

    def __init__(self, loaded: LoadedEngine) -> None:
        if loaded.post is None:
            raise ValueError("TensorRTBatchRunner runs the batched plans: load them with max_batch > 1")
        self.loaded = loaded  # the runner owns both engines: close() releases them
        self.name, self.precision, self.max_batch = loaded.name, loaded.precision, loaded.max_batch
        self.max_out = loaded.max_out  # the post plan's optimisation profile bounds the output size
        self._trt = loaded.trt
        self._lock = threading.Lock()  # one pair of contexts: batches from several threads take turns
        self._profilers: dict[int, Any] = {}
        self._bind(loaded.engine, loaded.post.engine)

    def _bind(self, network: Any, post: Any) -> None:
        """The two execution contexts, one CUDA stream, and device buffers for a full batch."""
        trt = self._trt
        self.network, self.post = network.create_execution_context(), post.create_execution_context()
        if self.network is None or self.post is None:
            raise SegdemoError(f"{self.name} could not create an execution context (out of GPU memory?) — "
                               f"close other GPU programs, lower --max-batch or use --backend onnxruntime")
        self.engines = (network, post)
        low, _, high = (tuple(dims) for dims in network.get_tensor_profile_shape(INPUT_IMAGE, 0))
        if low[0] != 1 or high[0] < self.max_batch:
            raise SegdemoError(f"{self.name}'s network plan takes batches of {low[0]} to {high[0]}, not 1 to "
                               f"{self.max_batch} — delete build/engines/*-batched-* so it is built again")
        logits = tuple(post.get_tensor_shape(LOGITS))  # (1, C, h, w), static
        if tuple(network.get_tensor_shape(LOGITS))[1:] != logits[1:] or not post.is_shape_inference_io(INPUT_SIZE) \
                or {e.get_tensor_dtype(LOGITS) for e in self.engines} != {trt.DataType.FLOAT} \
                or post.get_tensor_dtype(OUTPUT_CLASSES) != trt.DataType.UINT8:
            raise SegdemoError(f"{self.name}'s batched plans do not fit together — delete build/engines/*-batched-* "
                               f"and build/engines/*-post-* so they are built again")
        self.image_shape = (self.max_batch, *high[1:])
        self.stream = Stream()
        self.events = [Event() for _ in range(5)]  # reused: batches hold self._lock
        # Pinned host staging buffers make the copies truly asynchronous on our stream.
        self.image_bytes = int(np.prod(self.image_shape[1:]))  # uint8, per image
        self.host_images = PinnedBuffer(self.max_batch * self.image_bytes)
        self.device_images = DeviceBuffer(self.max_batch * self.image_bytes)
        self.logits_bytes = int(np.prod(logits[1:])) * 4  # float32, per image
        self.device_logits = DeviceBuffer(self.max_batch * self.logits_bytes)
        # The post plan reads an image's logits where the network wrote them when that address is aligned, else
        # from an aligned copy (input sizes whose logits are not a multiple of 256 bytes an image).
        self.logits_copy = None if self.logits_bytes % ALIGNMENT == 0 else DeviceBuffer(self.logits_bytes)
        # Class maps packed one after another at aligned offsets; one download brings them all.
        classes = self.max_batch * _aligned(self.max_out[0] * self.max_out[1])
        self.device_classes, self.host_classes = DeviceBuffer(classes), PinnedBuffer(classes)
        # out_size is a shape tensor in host memory: a row per image, so none is rewritten while TensorRT may read it.
        self.host_sizes = np.zeros((self.max_batch, 2), dtype=np.int64)
        self.network.set_tensor_address(INPUT_IMAGE, self.device_images.address())
        self.network.set_tensor_address(LOGITS, self.device_logits.address())
        self.post.set_input_shape(LOGITS, logits)
        self.post.set_input_shape(INPUT_SIZE, (2,))
        self.device_memory_bytes = sum(int(e.device_memory_size_v2) for e in self.engines)

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """One input as a batch of one — the pixels it gets in any batch; `detailed` adds per-layer spans."""
        return self._run([model_input], spans, detailed)[0]

    def run_batch(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        """The class map of each input, in order: the network once for all, the post-processing per image."""
        return self._run(inputs, spans, detailed=False)

    def _run(self, inputs: list[ModelInput], spans: SpanRecorder, detailed: bool) -> list[np.ndarray]:
        count = len(inputs)
        if not 1 <= count <= self.max_batch:
            raise ValueError(f"a batch of {count} inputs; this runner takes 1 to {self.max_batch}")
        offsets = [0]
        for model_input in inputs:
            height, width = model_input.out_size
            if not (1 <= height <= self.max_out[0] and 1 <= width <= self.max_out[1]):
                raise SegdemoError(f"output size {height}×{width} is outside the engine's profile (up to "
                                   f"{self.max_out[0]}×{self.max_out[1]}) — resize the image first")
            offsets.append(offsets[-1] + _aligned(height * width))
        with self._lock, spans.span("tensorrt run", INFERENCE, backend=self.name, precision=self.precision,
                                    batch=count, out_sizes=[list(x.out_size) for x in inputs],
                                    detailed=detailed) as attrs:
            if self.network is None:
                raise SegdemoError(f"the {self.name} engine was just rebuilt and reloaded — send the image again")
            images = self.host_images.view(np.uint8, self.image_shape)
            for index, model_input in enumerate(inputs):
                np.copyto(images[index], model_input.pixels[0])
            if not self.network.set_input_shape(INPUT_IMAGE, (count, *self.image_shape[1:])):
                raise SegdemoError(f"{self.name} refused a batch of {count} (see the TensorRT log) — rebuild the "
                                   f"engine: delete build/engines/*-batched-*")
            profilers = [self._profile(context) for context in (self.network, self.post)] if detailed else None
            events = self.events
            enqueued_ns = time.perf_counter_ns()
            stream = self.stream
            events[0].record(stream)
            stream.upload(self.device_images, self.host_images, count * self.image_bytes)
            events[1].record(stream)
            ok = self.network.execute_async_v3(stream.handle)
            events[2].record(stream)
            for index, model_input in enumerate(inputs):
                ok = ok and self._enqueue_post(index, model_input.out_size, offsets[index])
            events[3].record(stream)
            stream.download(self.host_classes, self.device_classes, offsets[-1])
            events[4].record(stream)
            stream.synchronize()
            done_ns = time.perf_counter_ns()
            if not ok:
                raise SegdemoError(f"{self.name} failed to execute (see the TensorRT log) — try --backend onnxruntime")
            device_ms = [events[i].elapsed_ms(events[i + 1]) for i in range(4)]
            attrs.update(upload_ms=device_ms[0], network_ms=device_ms[1], postprocess_ms=device_ms[2],
                         download_ms=device_ms[3])
            starts = device_spans(spans, ("upload", "network", "postprocess", "download"), device_ms, enqueued_ns,
                                  done_ns, self.name)
            if profilers is not None:
                layer_spans(spans, self.network, profilers[0], starts[1], self.name)
                layer_spans(spans, self.post, profilers[1], starts[2], self.name)
            return [self.host_classes.view(np.uint8, (h, w), start).copy()
                    for start, (h, w) in zip(offsets[:-1], (x.out_size for x in inputs), strict=True)]

    def _enqueue_post(self, index: int, out_size: tuple[int, int], offset: int) -> bool:
        """Bind image `index`'s logits, out_size and class map slot to the post context and enqueue it."""
        height, width = out_size
        self.host_sizes[index] = (height, width)  # read by TensorRT at shape inference and enqueue
        start = index * self.logits_bytes
        logits = self.device_logits.address(start)
        if self.logits_copy is not None:  # stream-ordered: the previous image's post run has read it by then
            self.stream.copy(self.logits_copy, self.device_logits, self.logits_bytes, src_offset=start)
            logits = self.logits_copy.address()
        post = self.post
        post.set_tensor_address(LOGITS, logits)
        post.set_tensor_address(INPUT_SIZE, self.host_sizes[index].ctypes.data)
        post.set_tensor_address(OUTPUT_CLASSES, self.device_classes.address(offset))
        shape = tuple(post.get_tensor_shape(OUTPUT_CLASSES))
        if shape != (1, height, width):
            raise SegdemoError(f"{self.name} inferred output shape {shape} for {height}×{width} — delete "
                               f"build/engines/*-post-* so the post-processing plan is built again")
        return post.execute_async_v3(self.stream.handle)

    def _profile(self, context: Any) -> Any:
        """An IProfiler on `context` for the next launch (one per context, kept)."""
        if id(context) not in self._profilers:
            self._profilers[id(context)] = layer_profiler(self._trt)
        return attach_profiler(context, self._profilers[id(context)])

    def close(self) -> None:
        """Drop contexts, engines and buffers (contexts first: they use the engines); safe to call twice."""
        with self._lock:  # a batch still running finishes first
            for attr in ("network", "post", "engines"):  # contexts before the memory bound to them
                setattr(self, attr, None)
            for attr in ("device_images", "device_logits", "logits_copy", "device_classes", "host_images",
                         "host_classes", "stream"):
                if getattr(self, attr, None) is not None:
                    getattr(self, attr).close()
                    setattr(self, attr, None)
            self.loaded.engine = None
            if self.loaded.post is not None:
                self.loaded.post.engine = None
