"""A segmentation session: load once (model → fused graph → backend), then segment many images.

Longer than 400 lines: Session is where every route of a request meets (device or host, alone, batched by the
batcher, or a video's frames batched by their caller), and they share its engine slot and result building."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from . import backends
from .batcher import Batcher, Ticket
from .graph.export import ensure_onnx
from .image.classmap import legend, legend_from_counts, restore_size
from .image.decode import EncodedJpeg, decode, encoded_bytes, plain_jpeg
from .image.preprocess import MAX_OUTPUT_SIDE, ModelInput, output_size, prepare, resize_for_model
from .image.visuals import (
    DEFAULT_OPACITY,
    DISPLAY_SIDE,
    display_size,
)
from .model.labels import palette
from .model.source import ModelSource, resolve
from .profiling.spans import ENGINE_WAIT_SPAN_NS, INFERENCE, LOAD, RequestHistory, Span, SpanRecorder
from .segmentation import EncoderFrame, Segmentation

log = logging.getLogger("segdemo")

WARM_UPS = ("auto", "now", "background", "off")
BATCH_WINDOW_MS = 3.0  # how long a batch waits for requests still on their way (only while there are any)
BATCH_MAX_PIXELS = 2_000_000  # larger images keep a DeviceRenderer's whole-request path (GPU decode, no host copy)


class Route(Enum):
    """Where one request runs: whole on the backend's device or on the host, alone or in a batch."""

    DEVICE = (True, False)
    DEVICE_BATCH = (True, True)
    HOST = (False, False)
    HOST_BATCH = (False, True)

    @property
    def on_device(self) -> bool:
        return self.value[0]

    @property
    def batched(self) -> bool:
        return self.value[1]


def choose_route(on_device: bool, batching: bool, pixels: int, batch_renders: bool) -> Route:
    """A request the device can render whole goes there; it joins a batch when batching is on and it is small enough.

    A BatchRenderer's batches are of whole requests, so one it cannot render goes alone, on the host; a BatchRunner's
    are of model inputs, so even a device-renderable request joins them on the host side.
    """
    batched = batching and pixels <= BATCH_MAX_PIXELS and (on_device or not batch_renders)
    if on_device and (not batched or batch_renders):
        return Route.DEVICE_BATCH if batched else Route.DEVICE
    return Route.HOST_BATCH if batched else Route.HOST


class Session:
    """Model, fused graph and backend, created once and shared by every request."""

    def __init__(
        self,
        model: str,
        backend: str = "auto",
        precision: str = "auto",
        build_dir: Path | None = None,
        max_side: int = MAX_OUTPUT_SIDE,
        source: ModelSource | None = None,
        progress: Callable[[float, str], None] | None = None,
        display_side: int = DISPLAY_SIDE,
        warm_up: str = "auto",
        max_batch: int = 1,
        batch_window_ms: float = BATCH_WINDOW_MS,
        encoded_images: bool = True,
    ) -> None:
        """`progress(fraction, message)` hears about long steps (engine builds); the app shows it.

        `max_side` bounds the class map the network's output is upsampled to; `display_side` the pictures shown.
        `warm_up`: "now" (before returning), "background" (in a thread holding the engine slot, so the session is
        ready at once and the first request waits for it as "engine wait"), "off" (a one-shot CLI: the first request
        is the warm-up), or "auto": background on CPU backends, now on GPU ones (their warm-up compiles and captures
        CUDA graphs, which the first request must not race).
        `max_batch` > 1: requests up to BATCH_MAX_PIXELS reaching the engine within `batch_window_ms` of each other
        share one engine call (batcher.Batcher) — whole requests on the device for a BatchRenderer, else model inputs
        for a BatchRunner; larger ones keep the device path of a DeviceRenderer. `encoded_images=False`: requests
        bring pixels only (an engine tier's), so no JPEG decoder is checked or compiled."""
        if warm_up not in WARM_UPS:
            raise ValueError(f"warm_up must be one of {', '.join(WARM_UPS)}, not {warm_up!r}")
        self.load_spans = SpanRecorder()
        self.history = RequestHistory()
        self.max_side = max_side
        self.display_side = display_side
        # One request in the engine at a time (one execution context, or all CPU cores); decoding, resizing and
        # everything made after the class map run outside it, alongside the next request's engine work.
        self._slot = threading.Lock()
        start = time.perf_counter()
        with self.load_spans.span("session load", LOAD, model=model) as attrs:
            with self.load_spans.span("resolve model", LOAD, model=model):
                self.source = source or resolve(model, build_dir)
            with self.load_spans.span("choose backend", LOAD):
                name, _ = backends.choose(backend)
            self._build_dir = build_dir
            # Only a backend that runs the graph waits for it: torch-cuda and a Triton server build from the model.
            self.onnx_file: Path | None = None  # set by fused_graph(), when something reads the graph
            self._graph_exported = False
            if backends.reads_graph(name):
                self.fused_graph()
            self._context = backends.LoadContext(self.source, build_dir, progress, long_lived=warm_up != "off",
                                                 encoded_images=encoded_images)
            self._options = {"max_batch": max_batch} if max_batch > 1 else {}  # kept for reload_backend
            self.backend = backends.create(name, self.onnx_file, self.load_spans, self._context,
                                           precision=backends.precision_for(name, precision), **self._options)
            self._batch_renders = isinstance(self.backend, backends.BatchRenderer)  # batches of whole requests
            self.batcher = self._batcher(max_batch, batch_window_ms)
            self._warm_thread = self._start_warm_up(warm_up)
            attrs.update(backend=name, precision=self.backend.precision, warm_up=self.warm_up)
        self.labels = self.source.labels
        self.colours = palette(self.labels)
        self.init_ms = (time.perf_counter() - start) * 1e3
        steps = ", ".join(f"{s.name} {s.duration_ms:.0f} ms" for s in self.load_spans.spans
                          if s.name != "session load" and s.duration_ms >= 5)
        graph = "no graph" if self.onnx_file is None else (
            f"graph {self.onnx_file.name} {self.onnx_file.stat().st_size / 1e6:.1f} MB"
            f"{', exported' if self._graph_exported else ', cache hit'}")
        log.info("init time: %.1f ms (model %s, backend %s, %s, %s; %s; warm-up %s; peak RSS %.0f MB)",
                 self.init_ms, self.source.spec, name, self.backend.precision, graph, steps, self.warm_up,
                 peak_rss_mb())
        for note in self.source.notes:
            log.warning(note)

    @property
    def random_weights(self) -> bool:
        return self.source.random_weights

    def describe(self) -> dict[str, Any]:
        """Facts about the session that go with every result (UI status line, legend.json)."""
        info = {
            "model": self.source.spec,
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "device": self.backend.device,
            "random_weights": self.random_weights,
        }
        if self.random_weights:
            info["notice"] = self.source.notes[0]
        return info

    def _batcher(self, max_batch: int, window_ms: float) -> Batcher | None:
        """Batches of render jobs for a BatchRenderer, of model inputs for a BatchRunner; None for other backends."""
        if max_batch <= 1 or not isinstance(self.backend, (backends.BatchRenderer, backends.BatchRunner)):
            return None
        return Batcher(self._run_batch, self.backend.max_batch, lambda: self._slot, window_ms / 1e3)

    def _run_batch(self, items: list[Any], spans: SpanRecorder) -> list[Any]:
        """The batcher's function, looked up on each batch's backend (reload_backend may replace it)."""
        backend = self.backend
        if self._batch_renders:
            assert isinstance(backend, backends.BatchRenderer)  # reload_backend keeps the backend's class
            return backend.render_batch(items, spans)
        assert isinstance(backend, backends.BatchRunner)  # else _batcher made no batcher
        return backend.run_batch(items, spans)

    def _start_warm_up(self, mode: str) -> threading.Thread | None:
        """Warm up now, in the background, or not at all (see __init__); returns the background thread."""
        if mode == "auto":
            mode = "background" if self.backend.device == "cpu" else "now"
        self.warm_up = mode
        if mode == "off":
            return None
        if mode == "now":
            with self.load_spans.span("warm-up", LOAD, backend=self.backend.name):
                self._warm_up()
            return None
        ready = threading.Event()

        def run() -> None:
            with self._slot:  # taken before the session reports ready, so no request can overtake the warm-up
                ready.set()
                start = time.perf_counter()
                try:
                    with self.load_spans.span("warm-up", LOAD, backend=self.backend.name, background=True):
                        self._warm_up()
                except Exception:  # noqa: BLE001 — the first request will meet the same error and report it
                    log.exception("background warm-up failed")
                    return
                log.info("warm-up done in the background: %.1f ms", (time.perf_counter() - start) * 1e3)

        # Not a daemon: a process that exits mid-warm-up (an imported app.py, a short script) must wait for this one
        # inference; a daemon thread inside ONNX Runtime at exit aborts the process ("terminate called ...").
        thread = threading.Thread(target=run, name="segdemo warm-up", daemon=False)
        thread.start()
        ready.wait()
        return thread

    def _warm_up(self) -> None:
        height, width = self.source.input_size
        blank = np.zeros((height, width, 3), np.uint8)
        self.backend.run(prepare(blank, (height, width)), SpanRecorder())
        if isinstance(self.backend, backends.DeviceRenderer):
            self.backend.render(blank, SpanRecorder(), DEFAULT_OPACITY, (height, width), (height, width))

    def segment(self, image: Any, spans: SpanRecorder | None = None, detailed: bool = False,
                record: bool = True) -> Segmentation:
        """Decode `image` (path, bytes, PIL or array) and segment it; spans go to `spans` if given.

        `detailed` adds per-layer spans from the backend's own profiler (slower; opt-in). Backends that can do the
        whole request on their device (`render`) get it, unless `detailed` asks for the host pipeline's spans.
        `record=False` keeps the request out of `history` (live and video frames keep their own statistics).
        """
        spans = spans or SpanRecorder()
        start = time.perf_counter()
        with self._ticket() as ticket, spans.span("request", INFERENCE) as attrs:  # batches wait for the ticket
            renderer = self.backend if isinstance(self.backend, backends.DeviceRenderer) and not detailed else None
            source = self._decoded_or_jpeg(image, spans, renderer)
            size = source.header.upright if isinstance(source, EncodedJpeg) else source.shape[:2]
            shown = display_size(size, self.display_side)
            route = choose_route(
                on_device=renderer is not None and (isinstance(source, EncodedJpeg) or self._renders(size)),
                batching=self.batcher is not None and not detailed and not self.batcher.alone(),
                pixels=size[0] * size[1],
                batch_renders=self._batch_renders)
            batched = ticket if route.batched else None
            if ticket is not None and batched is None:
                ticket.release()  # it will not join a batch: none should wait for it
            if route.on_device:
                assert renderer is not None  # choose_route goes on the device only with a renderer
                result = self._on_device(renderer, source, image, size, shown, spans, batched)
            else:
                if isinstance(source, EncodedJpeg):  # a device decoder's JPEG that rides a batch after all
                    with spans.span("decode", INFERENCE):
                        source = decode(source.data)
                result = self._on_host(source, shown, spans, detailed, batched)
            attrs.update(backend=self.backend.name, size=list(size), display=list(shown), route=route.name)
        infer_ms = (time.perf_counter() - start) * 1e3
        result.info = {**self.describe(), "image_size": list(size), "display_size": list(shown),
                       "infer_ms": round(infer_ms, 2)}
        if record:
            log.info("infer time: %.1f ms (%d×%d, %d classes present, peak RSS %.0f MB)",
                     infer_ms, size[1], size[0], len(result.legend), peak_rss_mb())
            self.history.append(spans)
        return result

    def _ticket(self) -> Ticket | nullcontext[None]:
        """The request's place in the next batch (released on leaving, whatever happened), or nothing to hold."""
        return self.batcher.expect() if self.batcher is not None else nullcontext()

    def _on_device(self, renderer: backends.DeviceRenderer, source: np.ndarray | EncodedJpeg, image: Any,
                   size: tuple[int, int], shown: tuple[int, int], spans: SpanRecorder,
                   batched: Ticket | None = None) -> Segmentation:
        """The whole request on the backend's device (in a batch when given the request's batcher ticket): one small
        download of what is shown, plus the class map."""
        out_size = output_size(size, self.max_side)
        if batched is not None:
            # a ticket comes from the batcher, which batches whole requests here: a BatchRenderer's
            assert self.batcher is not None and isinstance(self.backend, backends.BatchRenderer)
            job = backends.RenderJob(source, DEFAULT_OPACITY, out_size, shown)
            try:  # decoding and resizing in this thread, beside the batch on the device
                job = self.backend.prepare(job, spans)
            except BaseException:
                batched.release()  # it will not join a batch: none should wait for it
                raise
            rendered = self.batcher.submit(job, spans, batched)
        else:
            with self._engine(spans):
                rendered = renderer.render(source, spans, DEFAULT_OPACITY, out_size, shown)
        return self._from_rendered(rendered, source, image, spans)

    def _from_rendered(self, rendered: backends.Rendered, source: np.ndarray | EncodedJpeg, image: Any,
                       spans: SpanRecorder) -> Segmentation:
        with spans.span("legend", INFERENCE):
            entries = legend_from_counts(rendered.counts[: len(self.labels)], self.labels, self.colours)
        decoded = source if isinstance(source, np.ndarray) else None
        class_map, shown, shown_map, overlay = (rendered.class_map, rendered.display_image, rendered.display_map,
                                                rendered.display_overlay)
        # only an encoder_only job's lack them (encoder_frames), and none of those comes here
        assert class_map is not None and shown is not None and shown_map is not None and overlay is not None
        return Segmentation(class_map, entries, self.colours, spans, shown, shown_map, source=image, _image=decoded,
                            _display_overlays={rendered.opacity: overlay}, overlay_i420=rendered.overlay_i420)

    def _on_host(self, rgb: np.ndarray, shown: tuple[int, int], spans: SpanRecorder,
                 detailed: bool, batched: Ticket | None = None) -> Segmentation:
        """Resize here, run the backend (in a batch when given the request's batcher ticket), then restore the size
        and make the display pictures here."""
        with spans.span("resize", INFERENCE, size=list(rgb.shape[:2])):
            model_input = prepare(rgb, self.source.input_size, self.max_side)
        if batched is not None:
            assert self.batcher is not None  # a ticket comes from the batcher
            computed = self.batcher.submit(model_input, spans, batched)
        else:
            with self._engine(spans):
                computed = self.backend.run(model_input, spans, detailed=detailed)
        return self._finish_on_host(rgb, model_input, computed, shown, spans)

    def _finish_on_host(self, rgb: np.ndarray, model_input: ModelInput, computed: np.ndarray,
                        shown: tuple[int, int], spans: SpanRecorder) -> Segmentation:
        with spans.span("restore size", INFERENCE):
            class_map = restore_size(computed, model_input.original_size)
        with spans.span("legend", INFERENCE):
            entries = legend(class_map, self.labels, self.colours)
        with spans.span("display pictures", INFERENCE, size=list(shown)):
            display_image = resize_for_model(rgb, shown)  # Pillow's bilinear, as a GPU backend replays it
            display_map = restore_size(computed, shown)
        return Segmentation(class_map, entries, self.colours, spans, display_image, display_map, source=rgb,
                            _image=rgb)

    def segment_frames(self, frames: list[Any], spans: SpanRecorder, opacity: float = DEFAULT_OPACITY,
                       i420: bool = False) -> list[Segmentation]:
        """Upright RGB frames of one size (a video's: arrays, or — for a renderer with `device_frames` — tensors on its
        device, media.nvdec's), each result as `segment(frame, record=False)` gives it, in as
        few engine calls as the backend takes: whole on the device (a BatchRenderer: counts and overlays made there,
        one download a batch; `i420`: the overlays for an encoder too), the model inputs batched (a BatchRunner), else
        one at a time."""
        backend, size = self.backend, frames[0].shape[:2]
        out_size, shown = output_size(size, self.max_side), display_size(size, self.display_side)
        batch = max(1, getattr(backend, "max_batch", 1))
        chunks = [frames[k:k + batch] for k in range(0, len(frames), batch)]
        results: list[Segmentation] = []
        if self._renders_frames(size):
            job = backends.RenderJob(None, opacity, out_size, shown, i420)
            results = [self._from_rendered(done, frame, frame, spans)
                       for frame, done in self._render_frames(frames, job, spans)]
        elif isinstance(backend, backends.BatchRunner) and batch > 1:
            for chunk in chunks:
                with spans.span("resize", INFERENCE, size=list(size), frames=len(chunk)):
                    inputs = [prepare(frame, self.source.input_size, self.max_side) for frame in chunk]
                with self._engine(spans):
                    maps = backend.run_batch(inputs, spans)
                results += [self._finish_on_host(frame, model_input, computed, shown, spans)
                            for frame, model_input, computed in zip(chunk, inputs, maps, strict=True)]
        else:
            results = [self.segment(frame, spans, record=False) for frame in frames]
        return results

    def encoder_frames(self, frames: list[Any], spans: SpanRecorder,
                       opacity: float = DEFAULT_OPACITY) -> list[Segmentation | EncoderFrame]:
        """`segment_frames` of a video's frames for its encoder: where the device renders them, each frame's
        EncoderFrame (its counts and I420 overlay the one download: no class maps, no display pictures), else the
        full results (EncoderFrame.of makes them one)."""
        size = frames[0].shape[:2]
        if not self._renders_frames(size):
            return list(self.segment_frames(frames, spans, opacity, i420=True))
        job = backends.RenderJob(None, opacity, output_size(size, self.max_side), display_size(size, self.display_side),
                                 i420=True, encoder_only=True)
        results: list[Segmentation | EncoderFrame] = []
        for _, done in self._render_frames(frames, job, spans):
            overlay = done.overlay_i420 if done.overlay_i420 is not None else done.display_overlay
            assert overlay is not None  # an encoder_only job gets one or the other (RenderJob.encoder_only)
            with spans.span("legend", INFERENCE):
                entries = legend_from_counts(done.counts[: len(self.labels)], self.labels, self.colours)
            results.append(EncoderFrame(entries, overlay))
        return results

    def _renders_frames(self, size: tuple[int, int]) -> bool:
        """Whether frames of this size go whole to the device, in batches (a BatchRenderer that renders them)."""
        backend = self.backend
        return isinstance(backend, backends.BatchRenderer) and backend.renders(output_size(size, self.max_side))

    def _render_frames(self, frames: list[Any], job: backends.RenderJob,
                       spans: SpanRecorder) -> Iterator[tuple[Any, backends.Rendered]]:
        """Each frame with its Rendered, as `job` (its source replaced by the frame) asks, the backend's batch at a
        time; a frame's error is raised."""
        backend = self.backend
        assert isinstance(backend, backends.BatchRenderer)  # callers check _renders_frames
        for k in range(0, len(frames), max(1, backend.max_batch)):
            chunk = frames[k:k + max(1, backend.max_batch)]
            with self._engine(spans):
                rendered = backend.render_batch([replace(job, source=frame) for frame in chunk], spans)
            for frame, done in zip(chunk, rendered, strict=True):
                if isinstance(done, Exception):
                    raise done
                yield frame, done

    @contextmanager
    def _engine(self, spans: SpanRecorder) -> Iterator[None]:
        """Hold the engine slot; time spent queueing for it becomes an "engine wait" span. A concurrent backend (a
        server with its own queue) takes no slot."""
        if self.backend.concurrent:
            yield
            return
        queued = time.perf_counter_ns()
        with self._slot:
            waited = time.perf_counter_ns() - queued
            if waited > ENGINE_WAIT_SPAN_NS:
                spans.add(Span("engine wait", INFERENCE, queued, waited, threading.current_thread().name))
            yield

    def _renders(self, size: tuple[int, int]) -> bool:
        """Whether the backend can do a request of this (upright) image size on its device."""
        return isinstance(self.backend, backends.DeviceRenderer) and \
            self.backend.renders(output_size(size, self.max_side))

    def _decoded_or_jpeg(self, image: Any, spans: SpanRecorder,
                         renderer: backends.DeviceRenderer | None) -> np.ndarray | EncodedJpeg:
        """RGB pixels, or — for a device that decodes JPEGs itself — a plain JPEG it can take whole."""
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return image  # already decoded by the caller (inside its own "decode" span)
        if renderer is not None and renderer.decodes_jpeg:
            data = encoded_bytes(image)
            if data is not None:
                header = plain_jpeg(data)
                if header is not None and self._renders(header.upright):
                    return EncodedJpeg(data, header)
        with spans.span("decode", INFERENCE):
            return decode(image)

    def trace_spans(self, request: SpanRecorder) -> list[Span]:
        """The session's load spans plus one request's spans, for traces and plots."""
        return self.load_spans.spans + request.spans

    def fused_graph(self) -> Path:
        """The fused ONNX graph's file (self.onnx_file), exported on first need unless cached."""
        if self.onnx_file is None:
            with self.load_spans.span("onnx export", LOAD) as attrs:
                self.onnx_file, hit = ensure_onnx(self.source, self._build_dir, self.load_spans)
                self._graph_exported = not hit
                attrs.update(cache_hit=hit, file=self.onnx_file.name, bytes=self.onnx_file.stat().st_size)
        return self.onnx_file

    def reload_backend(self, precision: str) -> None:
        """Recreate the backend (e.g. after an engine rebuild) at `precision`, then close the old one.

        Backends close under their own lock, so a request still running on the old one finishes first.
        """
        old = self.backend
        self.backend = backends.create(old.name, self.onnx_file, self.load_spans, self._context, precision=precision,
                                       **self._options)  # batching too: the batcher runs on the new backend
        old.close()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the background warm-up and the backend's background work (benchmarks time a settled session);
        True once nothing is left running."""
        if self._warm_thread is not None:
            self._warm_thread.join(timeout)
            if self._warm_thread.is_alive():
                return False
        return self.backend.settle(timeout)

    def close(self) -> None:
        if self._warm_thread is not None:
            self._warm_thread.join()
        if self.batcher is not None:
            self.batcher.close()
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
