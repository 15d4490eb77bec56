"""torch-cuda's Backend: each request replays the network's and its output bucket's CUDA graphs over static buffers fed
and drained through pinned memory; `render` keeps a whole request on the GPU, `render_batch` several at once."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from ...errors import BadImageError
from ...image.decode import EncodedJpeg
from ...image.preprocess import ModelInput
from ...model.labels import palette
from ...profiling.spans import INFERENCE, LOAD, SpanRecorder
from ..contract import Backend, BatchRenderer, BatchRunner, LoadContext, Rendered, RenderJob
from .graphs import MAX_GRAPHED_SIDE, PostGraphs, batch_bucket, bucket_split
from .jpeg import GpuJpegDecoder, checked_decoder
from .network import COMPILE_ENV, NAME, Network
from .ops import bucket, source_coordinates, upsample_argmax
from .prepare import Prepared, Preparers, device_images, network_input, upright_image
from .render import Pictures, device_spans, download

if TYPE_CHECKING:
    from ...model.source import ModelSource
    from .graphs import BatchGraph

log = logging.getLogger(__name__)

READS_GRAPH = False  # it builds from the model source (context.source): a session exports no ONNX graph for it
BACKGROUND_DONE = "torch-cuda background work done"  # logged once the program, batch graphs and compilation are


def unavailable_reason() -> str | None:
    from ...gpu import torch_cuda_reason

    return torch_cuda_reason()


class TorchCudaBackend(Backend, BatchRenderer, BatchRunner):
    """CUDA-graph replays over static device buffers, fed and drained through pinned host memory."""

    name = NAME
    device = "cuda"
    device_frames = True  # render and render_batch take upright RGB frames already on the GPU (media.nvdec's)

    def __init__(self, source: ModelSource, spans: SpanRecorder, precision: str = "fp16", device: int = 0,
                 compile: bool | None = None, build_dir: Path | None = None,
                 progress: Callable[[float, str], None] | None = None, max_batch: int = 1,
                 long_lived: bool = True, encoded_images: bool = True) -> None:
        """`compile`: torch.compile the network (default $SEGDEMO_TORCH_COMPILE, on) — in the background, swapping
        each CUDA graph for its compiled twin when ready, in a `long_lived` session; one-shot runs stay uncompiled.
        `encoded_images=False`: no request brings a JPEG, so the GPU decoders are neither checked nor compiled."""
        import torch

        if precision not in ("fp16", "fp32"):
            raise ValueError(f"torch-cuda runs fp16 or fp32, not {precision}")
        self.torch = torch
        self.precision = precision
        self.cuda = torch.device("cuda", device)
        self.input_size = source.input_size
        self.lock = threading.Lock()  # one set of static buffers: requests take turns
        self.closing = threading.Event()  # set by close: background threads stop at their next step
        self.compiling: threading.Thread | None = None  # the background loading and compiling (see below)
        wanted = os.environ.get(COMPILE_ENV, "1") != "0" if compile is None else compile
        self.network = Network(source, spans, precision, self.cuda, wanted, self.lock, self.closing, build_dir,
                               progress)
        self.stream = torch.cuda.Stream(self.cuda)
        height, width = self.input_size
        self.host_pixels = torch.empty((1, height, width, 3), dtype=torch.uint8, pin_memory=True)
        self.network.capture(self.stream, spans)
        self.post = PostGraphs(self.stream, self.cuda, self.network.logits)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(6)]  # reused: requests hold self.lock
        self.pictures = Pictures(self.cuda, self.stream, self.events, palette(source.labels))
        self.jpeg_decoder: GpuJpegDecoder | None = None
        self.unchecked: SpanRecorder | None = None  # a one-shot run checks the JPEG decoders at its first JPEG
        self.max_batch = max_batch
        # Batched requests decode and resize in their own threads (`prepare`), beside the batch the GPU is running;
        # a one-shot run's batches (video frames) come decoded, in one thread.
        self.preparers = Preparers(self.cuda, self.input_size) if max_batch > 1 and long_lived else None
        if max_batch > 1:
            self.host_batch = torch.empty((batch_bucket(max_batch), height, width, 3), dtype=torch.uint8,
                                          pin_memory=True)
        if long_lived:
            # Requests replay the batch-1 graph while one background thread checks the GPU JPEG decoders (Pillow
            # decodes until then, the same pixels), loads the exported program, captures a graph per batch bucket
            # and compiles the network, then the JPEG colour conversion. One thread, because torch's lazy imports
            # (torch._dynamo) are not safe to race from two; not a daemon, because interpreter shutdown in the
            # middle of a compilation aborts.
            self.compiling = threading.Thread(target=self._background,
                                              args=(spans, wanted, wanted and not self.network.aot, encoded_images),
                                              name="segdemo background load")
            self.compiling.start()
        else:
            # One-shot: nothing in the background (a compilation would not pay within the run, and its thread would
            # hold the process at exit); the one batch graph the run replays is captured now, from a cached trace.
            self.unchecked = spans
            if max_batch > 1:
                try:
                    self.network.capture_batch(spans, max_batch)
                except Exception:  # noqa: BLE001 — batches then run image by image
                    log.exception("capturing the batch graph failed; batches run image by image")

    @property
    def compiled(self) -> bool:
        """Whether the graphs replay compiled code."""
        return self.network.compiled

    @property
    def decoder_name(self) -> str:
        return self.jpeg_decoder.name if self.jpeg_decoder is not None else "Pillow (host)"

    @property
    def decodes_jpeg(self) -> bool:
        if self.unchecked is not None:  # a one-shot run's first JPEG: check the decoders now, not at load
            spans, self.unchecked = self.unchecked, None
            self._check_decoder(spans)
        return self.jpeg_decoder is not None

    def _check_decoder(self, spans: SpanRecorder) -> None:
        """The checked GPU JPEG decoder into self.jpeg_decoder (its colour conversion uncompiled)."""
        with spans.span("check gpu jpeg decoder", LOAD, backend=self.name) as attrs:
            decoder = checked_decoder(self.cuda, self.torch.cuda.Stream(self.cuda))
            attrs.update(decoder=decoder.name if decoder is not None else "Pillow (host)",
                         mean_difference_to_pillow=decoder.difference if decoder is not None else None)
        with self.lock:
            if self.closing.is_set() and decoder is not None:
                decoder.close()
            elif not self.closing.is_set():
                if decoder is not None and self.preparers is not None:
                    try:  # batched requests decode with twins of it: all of them or none uses the GPU decoder
                        self.preparers.use_decoder(decoder)
                    except Exception:
                        decoder.close()
                        raise
                self.jpeg_decoder = decoder

    def _background(self, spans: SpanRecorder, compile_colour: bool, compile: bool, decoders: bool = True) -> None:
        """Check the JPEG decoders (if `decoders`), load the exported program, capture its graph for each batch
        bucket, compile the network (if `compile`), then the JPEG colour conversion (if `compile_colour`)."""
        try:
            if decoders:
                self._check_decoder(spans)
        except Exception:  # noqa: BLE001 — Pillow keeps decoding uploads
            log.exception("checking the GPU JPEG decoders failed; Pillow decodes uploads")
        if self.max_batch > 1 or compile:
            self.network.load_in_background(spans, compile, self.max_batch)
        if compile_colour and self.jpeg_decoder is not None and not self.closing.is_set():
            self.jpeg_decoder.compile_colour(self.cuda)
        log.info("%s: %s, batch graphs %s", BACKGROUND_DONE, "compiled" if self.network.compiled else "uncompiled",
                 sorted(self.network.batch_graphs))

    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Upload, replay the network and post-processing graphs, download; GPU stages become spans always."""
        torch, network = self.torch, self.network
        out_h, out_w = model_input.out_size
        with self.lock, spans.span("execute", INFERENCE, backend=self.name, out_size=[out_h, out_w]) as attrs:
            graphed = max(out_h, out_w) <= MAX_GRAPHED_SIDE
            entry = self.post.get((out_h, out_w)) if graphed else None
            events = self.events
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                self.host_pixels.numpy()[...] = model_input.pixels
                host_start = time.perf_counter_ns()
                events[0].record(self.stream)
                network.pixels.copy_(self.host_pixels, non_blocking=True)
                if entry is not None:
                    self.post.upload_grid(entry, (out_h, out_w))
                events[1].record(self.stream)
                network.replay()
                events[2].record(self.stream)
                if entry is not None:
                    entry.graph.replay()
                    # Contiguous on both sides, so the download is one plain asynchronous copy.
                    classes = entry.classes[:out_h, :out_w].contiguous()
                    host = self.post.host_classes[: out_h * out_w].view(out_h, out_w)
                else:  # beyond the graphed buckets: the same computation, launched eagerly
                    logit_h, logit_w = network.logits.shape[2:]
                    grid_x = torch.from_numpy(source_coordinates(logit_w, out_w, out_w)).to(self.cuda)
                    grid_y = torch.from_numpy(source_coordinates(logit_h, out_h, out_h)).to(self.cuda)
                    classes = upsample_argmax(network.logits, grid_x, grid_y)
                    host = torch.empty((out_h, out_w), dtype=torch.uint8, pin_memory=True)
                events[3].record(self.stream)
                host.copy_(classes, non_blocking=True)
                events[4].record(self.stream)
                events[4].synchronize()
                result = host.numpy().copy()  # the pinned buffer is reused by the next request
            attrs.update(graphed=entry is not None, bucket=list(bucket((out_h, out_w))))
            device_spans(spans, events, host_start, ("upload", "network", "postprocess", "download"), self.name)
        return result

    def run_batch(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        """Upload the batch, replay its bucket's network graph, then per image its post-processing graph, and one
        download; a bucket's padding rows compute what is never read."""
        torch, network = self.torch, self.network
        sizes = bucket_split(len(inputs), list(network.batch_graphs))
        if len(sizes) > 1:  # a padded bucket would cost more than another call
            return [result for part in _chunks(inputs, sizes) for result in self.run_batch(part, spans)]
        if len(inputs) == 1 or network.batch_graph(len(inputs)) is None:
            return [self.run(model_input, spans) for model_input in inputs]
        if any(max(model_input.out_size) > MAX_GRAPHED_SIDE for model_input in inputs):
            return [self.run(model_input, spans) for model_input in inputs]
        with self.lock, spans.span("execute", INFERENCE, backend=self.name, batch=len(inputs)) as attrs:
            entry = cast("BatchGraph", network.batch_graph(len(inputs)))  # checked above
            events = self.events
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                host = self.host_batch[: len(inputs)]
                for i, model_input in enumerate(inputs):
                    host.numpy()[i] = model_input.pixels[0]
                host_start = time.perf_counter_ns()
                events[0].record(self.stream)
                entry.pixels[: len(inputs)].copy_(host, non_blocking=True)
                events[1].record(self.stream)
                entry.graph.replay()
                events[2].record(self.stream)
                maps = []
                for i, model_input in enumerate(inputs):
                    out_h, out_w = model_input.out_size
                    post = self.post.get((out_h, out_w))
                    network.logits.copy_(entry.logits[i:i + 1])
                    self.post.upload_grid(post, (out_h, out_w), staged=False)
                    post.graph.replay()
                    # Always a copy: .contiguous() of a slice that is already contiguous (a size filling its bucket's
                    # rows) returns the graph's own output, which the next image's replay would overwrite before
                    # the download (wrong answers under load before this, docs/benchmarks.md).
                    maps.append(post.classes[:out_h, :out_w].clone(memory_format=torch.contiguous_format))
                events[3].record(self.stream)
                parts = download(maps)
                events[4].record(self.stream)
                events[4].synchronize()
                result = [part.numpy() for part in parts]
            attrs.update(bucket=entry.bucket)
            device_spans(spans, events, host_start, ("upload", "network", "postprocess", "download"), self.name)
        return result

    def renders(self, out_size: tuple[int, int]) -> bool:
        """Whether `render` can make a class map of this (height, width): it must fit a graphed bucket."""
        return max(out_size) <= MAX_GRAPHED_SIDE

    def render(self, source: EncodedJpeg | np.ndarray, spans: SpanRecorder, opacity: float,
               out_size: tuple[int, int], display: tuple[int, int]) -> Rendered:
        """The whole request on the GPU from a plain JPEG (decode.plain_jpeg) or upright RGB, as the host pipeline
        does it (a JPEG decoded here may differ only by inverse-DCT rounding); only the maps and pictures come back."""
        return self._render(RenderJob(source, opacity, out_size, display), spans)

    def _render(self, job: RenderJob, spans: SpanRecorder) -> Rendered:
        """`render` of one job, whatever else it asks for (RenderJob.i420)."""
        torch = self.torch
        source, out_size, display = job.source, job.out_size, job.display
        self._check_renders([job])
        with self.lock, spans.span("execute", INFERENCE, backend=self.name, on_device=True) as attrs:
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                host_start = time.perf_counter_ns()
                self.events[0].record(self.stream)
                image, host_image = upright_image(source, spans, self.cuda, self.jpeg_decoder)
                entry = self.post.get(out_size)  # captured on the bucket's first request
                self.network.pixels[0].copy_(network_input(source, image, self.cuda, self.input_size))
                self.post.upload_grid(entry, out_size)
                self.events[1].record(self.stream)
                self.network.replay()
                self.events[2].record(self.stream)
                maps = self.pictures.class_maps(entry, out_size, cast("tuple[int, int]", tuple(image.shape[:2])),
                                                display)
                (rendered,) = self.pictures.render_and_download([(job, image, host_image, maps)])
            attrs.update(decoder=self.decoder_name if host_image is None else "host", bucket=list(bucket(out_size)),
                         out_size=list(out_size), display=list(display))
            device_spans(spans, self.events, host_start, ("prepare", "network", "postprocess", "render", "download"),
                         self.name)
        return rendered

    def render_batch(self, jobs: list[RenderJob], spans: SpanRecorder) -> list[Rendered | Exception]:
        """Several requests as `render` does each, with one replay of the batch bucket's network graph and one
        download of everything."""
        torch, network = self.torch, self.network
        self._check_renders(jobs)
        sizes = bucket_split(len(jobs), list(network.batch_graphs))
        if len(sizes) > 1:  # a padded bucket would cost more than another call
            return [result for part in _chunks(jobs, sizes) for result in self.render_batch(part, spans)]
        entry = network.batch_graph(len(jobs))
        if len(jobs) == 1 or entry is None:  # graphs not captured yet, or a backend reloaded without max_batch
            return [self._render_or_refuse(job, spans) for job in jobs]
        with self.lock, spans.span("execute", INFERENCE, backend=self.name, on_device=True, batch=len(jobs)) as attrs:
            with torch.inference_mode(), torch.cuda.stream(self.stream):
                host_start = time.perf_counter_ns()
                self.events[0].record(self.stream)
                # each refused job keeps its error; the others' entries become their Rendered (returned as such)
                images: list[Any] = device_images(jobs, spans, self.cuda, self.jpeg_decoder, self.stream)
                ready = [i for i, image in enumerate(images) if not isinstance(image, Exception)]
                if not ready:
                    return images
                posts = [self.post.get(jobs[i].out_size) for i in ready]  # captured on a bucket's first request
                torch.stack([network_input(jobs[i].source, images[i][0], self.cuda, self.input_size) for i in ready],
                            out=entry.pixels[: len(ready)])
                self.events[1].record(self.stream)
                entry.graph.replay()
                self.events[2].record(self.stream)
                done = []
                for slot, (i, post) in enumerate(zip(ready, posts, strict=True)):
                    network.logits.copy_(entry.logits[slot:slot + 1])
                    self.post.upload_grid(post, jobs[i].out_size, staged=False)
                    image, host_image = images[i]
                    maps = self.pictures.class_maps(post, jobs[i].out_size, tuple(image.shape[:2]), jobs[i].display)
                    done.append((jobs[i], image, host_image, maps))
                rendered = self.pictures.render_and_download(done)
            for i, result in zip(ready, rendered, strict=True):
                images[i] = result
            attrs.update(bucket=entry.bucket, refused=len(jobs) - len(ready))
            device_spans(spans, self.events, host_start, ("prepare", "network", "postprocess", "render", "download"),
                         self.name)
        return images

    def prepare(self, job: RenderJob, spans: SpanRecorder) -> RenderJob:
        """Decode or upload, orient and resize the job's picture on a stream of its own in the calling thread
        (batched backends; others leave it to `render`)."""
        if self.preparers is None or isinstance(job.source, Prepared):
            return job
        self._check_renders([job])
        return replace(job, source=self.preparers.prepare(job.source, spans))

    def _check_renders(self, jobs: list[RenderJob]) -> None:
        for job in jobs:
            if not self.renders(job.out_size):
                raise ValueError(f"render makes class maps up to {MAX_GRAPHED_SIDE} px a side, not {job.out_size}")

    def _render_or_refuse(self, job: RenderJob, spans: SpanRecorder) -> Rendered | Exception:
        """`render`, or the error of an upload its decoder refuses (that request fails alone, as unbatched)."""
        try:
            return self._render(job, spans)
        except BadImageError as exc:
            return exc

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the background compilations of the network and the JPEG colour conversion (requests are slower
        until they are done)."""
        if self.compiling is not None:
            self.compiling.join(timeout)
        return self.compiling is None or not self.compiling.is_alive()

    def facts(self) -> dict[str, Any]:
        network = self.network
        how = ("AOTInductor" if network.aot else "torch.compile" if network.compiled else
               "uncompiled (torch.compile running in the background)"
               if self.compiling is not None and self.compiling.is_alive() else "uncompiled")
        return {"Engine cache": network.cache_fact(),
                "Network": f"{how}, {self.precision}, channels-last, "
                           f"{'CUDA graph' if network.graph is not None else 'launched per request'}",
                "JPEG decoder": self.decoder_name,
                "Device memory": f"{self.torch.cuda.max_memory_reserved(self.cuda) / 1e6:.0f} MB reserved (peak)"}

    def close(self) -> None:
        """Drop graphs, network and buffers so the caching allocator can hand the memory back."""
        self.closing.set()  # a background compilation stops at its next graph
        if self.compiling is not None and self.compiling is not threading.current_thread():
            self.compiling.join()
        with self.lock:
            self.post.close()
            self.pictures.close()
            if self.jpeg_decoder is not None:
                self.jpeg_decoder.close()
            if self.preparers is not None:
                self.preparers.close()
            self.network.close()
            for attr in ("host_pixels", "events", "jpeg_decoder", "preparers"):
                setattr(self, attr, None)
            self.torch.cuda.empty_cache()


def create(onnx_file: Path | None, spans: SpanRecorder, context: LoadContext, precision: str = "fp16", device: int = 0,
           compile: bool | None = None, max_batch: int = 1) -> TorchCudaBackend:
    """torch-cuda builds from the model itself (context.source), not from the graph; `compile`: torch.compile the
    network (default: $SEGDEMO_TORCH_COMPILE, on; $SEGDEMO_TORCH_AOT=1 loads it from an AOTInductor package)."""
    if context.source is None:
        raise ValueError("torch-cuda builds from the model source: pass a LoadContext with source=")
    return TorchCudaBackend(context.source, spans, precision, device, compile, context.build_dir, context.progress,
                            max_batch, context.long_lived, context.encoded_images)


T = TypeVar("T")


def _chunks(items: list[T], sizes: list[int]) -> list[list[T]]:
    """`items` cut into consecutive parts of `sizes` (which sum to its length)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [items[start:start + size] for start, size in zip(starts, sizes, strict=True)]
