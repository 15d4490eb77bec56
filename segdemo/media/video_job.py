"""Segmenting a video file: decode → segment → overlay → encode (H.264 MP4), with each class's share per frame.

The file side (limits, probing, frames, the encoder) is `video_io`. Three stages overlap: a decoder thread (reading
the frames of the job's decoder child, where FFmpeg demuxes and decodes), the engine (this thread, frames in batches
through `segment_frames`) and an encoder thread, joined by short queues so memory stays bounded whatever the clip's
length.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..image.visuals import DEFAULT_OPACITY
from ..pipeline import Session
from ..profiling.spans import INFERENCE, SpanRecorder
from ..segmentation import EncoderFrame
from .video_io import (
    APP_LIMITS,
    FAST_PRESET,
    PRESET,
    BadVideoError,
    DecoderProcess,
    Encoder,
    VideoInfo,
    VideoLimits,
    av_module,
    even_size,
    open_video,
)

log = logging.getLogger("segdemo")

BATCH = 8  # frames per list through segment_frames where the backend takes one frame at a time
GPU_BATCH = 16  # a video's batch on torch-cuda: the bucket the batched network was measured at (docs/benchmarks.md)
# Backends a video job asks for batches: torch-cuda's one-shot batch graph comes from a cached trace. Not TensorRT's:
# its batched plans need the batched ONNX graphs exported from the model (torch), which a prepared build folder run
# without torch lacks (and that path was not measured); not the CPU's, which gains nothing from batches.
BATCH_BACKENDS = ("torch-cuda",)
BATCH_PIXELS = GPU_BATCH * 1920 * 1080  # frames per list shrink for larger frames: the queues hold a few lists
QUEUE_BATCHES = 2  # decoded batches waiting for the engine, and overlays waiting for the encoder


def max_batch_for(backend: str) -> int:
    """The session's `max_batch` for a video job on `backend` (a name from backends.choose)."""
    return GPU_BATCH if backend in BATCH_BACKENDS else 1


def frames_per_list(session: Session, info: VideoInfo) -> int:
    """Frames per list through segment_frames: the backend's batch (BATCH where it has none), fewer for frames so
    large that the lists waiting in the queues would crowd memory (4K: 4 at a time)."""
    batch = getattr(session.backend, "max_batch", 1)
    return max(1, min(batch if batch > 1 else BATCH, BATCH_PIXELS // max(1, info.width * info.height)))


def segment_frames(session: Session, frames: list[Any], spans: SpanRecorder,
                   opacity: float = DEFAULT_OPACITY) -> list[EncoderFrame]:
    """Segment a list of RGB frames of one size for the encoder: batched where the backend runs batches, with the
    overlays as I420 where the device makes them (the encoder then converts nothing, and nothing else of a frame is
    downloaded: Session.encoder_frames); each frame's legend gives its shares."""
    with spans.span("segment", INFERENCE, frames=len(frames)):
        results = session.encoder_frames(frames, spans, opacity)
    with spans.span("overlay", INFERENCE, frames=len(frames)):  # made here only for frames done on the host
        return [r if isinstance(r, EncoderFrame) else EncoderFrame.of(r, opacity) for r in results]


@dataclass
class VideoResult:
    """The segmented video and what was measured while making it."""

    path: Path
    info: VideoInfo
    frames: int
    size: tuple[int, int]  # (height, width) of the written video
    shares: np.ndarray  # frames × classes, fraction of each frame's pixels per class id
    labels: list[str]
    colours: np.ndarray
    seconds: float  # wall time of the whole job
    spans: SpanRecorder
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return float(self.info.fps)

    @property
    def speed(self) -> float:
        """Video time processed per wall second (2.0: twice as fast as real time)."""
        return (self.frames / self.fps) / self.seconds if self.seconds else 0.0

    def present(self, top: int | None = None) -> list[int]:
        """Class ids that appear in any frame, largest mean share first (the `top` of them)."""
        mean = self.shares.mean(axis=0) if len(self.shares) else np.zeros(len(self.labels))
        ids = [int(i) for i in np.argsort(-mean, kind="stable") if self.shares[:, i].max(initial=0) > 0]
        return ids[:top] if top else ids

    def figure(self, top: int = 10) -> Any:
        """Plotly: the share over time of the `top` classes with the largest mean share."""
        from ..profiling.timeline import share_figure

        ids = self.present(top)
        hexes = [_hex(self.colours[i]) for i in ids]
        step = max(1, len(self.shares) // 600)  # a point per frame up to 600, then every step-th frame
        rows = self.shares[::step][:, ids].tolist()
        times = [k * step / self.fps for k in range(len(rows))]
        return share_figure(times, rows, [self.labels[i] for i in ids], hexes)

    def summary(self) -> dict[str, Any]:
        height, width = self.size
        return {**self.facts, "frames": self.frames, "fps": round(self.fps, 3),
                "video_seconds": round(self.frames / self.fps, 3), "size": [height, width],
                "source_size": [self.info.height, self.info.width], "codec": "h264 (libx264), yuv420p, mp4",
                "wall_seconds": round(self.seconds, 3), "speed_vs_real_time": round(self.speed, 3)}

    def write_csv(self, path: Path) -> Path:
        """One row per frame: frame, time_s, then the share (0..1) of each class present anywhere in the video."""
        ids = self.present()
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", "time_s", *(self.labels[i] for i in ids)])
            for k, row in enumerate(self.shares):
                writer.writerow([k, f"{k / self.fps:.4f}", *(f"{row[i]:.6f}" for i in ids)])
        return path

    def write_json(self, path: Path) -> Path:
        ids = self.present()
        data = {**self.summary(),
                "classes": [{"id": i, "name": self.labels[i], "color": _hex(self.colours[i]),
                             "mean_share": round(float(self.shares[:, i].mean()), 6)} for i in ids],
                "shares": [[round(float(row[i]), 6) for i in ids] for row in self.shares]}
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path


def gpu_frames(session: Session, child: DecoderProcess) -> Iterator[Any]:
    """The child's packets decoded by NVDEC on the session's GPU: upright RGB frames there (media.nvdec)."""
    from .nvdec import GpuVideoDecoder

    device = getattr(getattr(session.backend, "cuda", None), "index", None) or 0
    try:
        decoder = GpuVideoDecoder(child.info, child.limits, child.name, device)
    except Exception as exc:  # noqa: BLE001 — a driver or profile NVDEC does not take: one sentence, what to do
        raise BadVideoError(f"the GPU video decoder could not start on {child.name} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); set SEGDEMO_NVDEC=0 to "
                            f"decode on the host") from None
    return decoder.frames(child.packets())


def write_outputs(result: VideoResult, folder: Path, load_spans: list | None = None) -> dict[str, Path]:
    """shares.csv, shares.json and profiling.json (the session's load spans, if given, then the job's) in `folder`."""
    from ..profiling.trace import write_trace

    return {"csv": result.write_csv(folder / "shares.csv"), "json": result.write_json(folder / "shares.json"),
            "profiling": write_trace(folder / "profiling.json", (load_spans or []) + result.spans.spans,
                                     result.summary())}


def _hex(rgb: np.ndarray) -> str:
    return "#" + bytes(int(v) for v in rgb[:3]).hex()


Progress = Callable[[int, int], None]  # (frames done, frames expected)


class Pace:
    """A Progress that tells `report(fraction, line)` the frames done, the frames a second so far and the
    real-time factor (video time made per second of the job) — what the Video tab and the command line show."""

    def __init__(self, fps: Fraction, report: Callable[[float, str], None]) -> None:
        self.fps, self.report, self.start = float(fps), report, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.report(done / max(total, 1), f"{done} / {total} frames · {rate:.1f} frames/s · "
                                          f"{rate / self.fps:.2f}× real time")


def decoder_mode(backend: str) -> str:
    """The decoder child's mode (video_child.MODES) a job on `backend` (a --backend value) will probably take, for a
    child started before the session loads (segment_video starts another if it was wrong)."""
    from .nvdec import nvdec_likely

    return "packets" if nvdec_likely(backend) else "decode"


def segment_video(session: Session, source: str | Path | DecoderProcess, out: Path,
                  opacity: float = DEFAULT_OPACITY, limits: VideoLimits = APP_LIMITS,
                  progress: Progress | None = None, spans: SpanRecorder | None = None,
                  batch: int | None = None) -> VideoResult:
    """Decode `source`, segment every frame, write the overlay video to `out` (H.264 MP4, source frame rate).

    `source` may be the job's decoder child already started (open_video, of decoder_mode; its own limits hold): the
    job then owns it and closes it."""
    from .nvdec import nvdec_reason

    spans = spans or SpanRecorder()
    start = time.perf_counter()
    why_not = nvdec_reason(session, limits)
    mode = "decode" if why_not else "packets"
    with spans.span("probe", INFERENCE) as attrs:
        if isinstance(source, DecoderProcess) and source.mode != mode:
            source.close()  # started in the mode guessed before the session loaded, wrongly: one of the right mode
            source = source.path
        attrs["started_before"] = isinstance(source, DecoderProcess)
        # One child per job: it probes, then decodes — or, for a GPU decoder here, demuxes packets of the streams
        # it can take (`child.sends_packets`)
        child = source if isinstance(source, DecoderProcess) else open_video(source, limits, mode)
    if not child.sends_packets:
        log.info("video: frames decoded on the host (PyAV, in the decoder child): %s",
                 why_not or f"{child.info.codec} {child.info.pix_fmt} is not a stream NVDEC decodes here")
    try:
        batch = batch or frames_per_list(session, child.info)
        return _segment(session, child, out, opacity, progress, spans, batch, start)
    finally:
        child.close()  # whatever happened: the child never outlives its job


def _segment(session: Session, child: DecoderProcess, out: Path, opacity: float, progress: Progress | None,
             spans: SpanRecorder, batch: int, start: float) -> VideoResult:
    av = av_module()
    info, source = child.info, child.path
    out.parent.mkdir(parents=True, exist_ok=True)
    decoded: queue.Queue = queue.Queue(QUEUE_BATCHES)
    encoded: queue.Queue = queue.Queue(QUEUE_BATCHES)
    stop = threading.Event()
    errors: list[BaseException] = []
    shares: list[np.ndarray] = []
    classes = len(session.labels)

    def decode() -> None:
        chunk: list[Any] = []  # RGB frames: arrays from the child, or tensors on the GPU
        try:
            stream = gpu_frames(session, child) if child.sends_packets else child.frames()
            while not stop.is_set():
                with spans.span("decode", INFERENCE, gpu=child.sends_packets) as attrs:
                    while len(chunk) < batch and (frame := next(stream, None)) is not None:
                        chunk.append(frame)
                    attrs["frames"] = len(chunk)
                if not chunk:
                    break
                decoded.put(chunk)
                chunk = []
        except BaseException as exc:  # noqa: BLE001 — handed to the caller's thread
            errors.append(exc)
        finally:
            decoded.put(None)

    container = av.open(str(out), "w", options={"movflags": "+faststart"})  # index first: plays while loading
    preset = PRESET if session.backend.device == "cpu" else FAST_PRESET
    writer = Encoder(container, info.fps, spans, encoded, errors, preset)
    reader = threading.Thread(target=decode, name="video decode", daemon=True)
    reader.start()
    writer.start()
    done, size = 0, None
    try:
        while (chunk := decoded.get()) is not None:
            results = segment_frames(session, chunk, spans, opacity)
            for r in results:
                counts = np.zeros(classes, np.float64)
                for entry in r.legend:
                    counts[entry.id] = entry.share
                shares.append(counts)
            size = size or even_size(*results[0].size)
            # I420 from the device where it made it (already of even sides), else the RGB overlay made even here
            encoded.put([r.overlay if r.i420 else r.overlay[: size[0], : size[1]] for r in results])
            done += len(chunk)
            if progress:
                progress(done, max(done, info.frames))
            if errors:
                break
    finally:
        stop.set()
        if errors or reader.is_alive():
            child.kill()  # a decoder still running is not needed any more (its reader then sees the pipe end)
        while reader.is_alive():  # unblock a decoder waiting on a full queue
            try:
                decoded.get(timeout=0.1)
            except queue.Empty:
                pass
        encoded.put(None)
        writer.join()
        container.close()
    if errors:
        out.unlink(missing_ok=True)
        raise errors[0]
    if size is None:
        raise BadVideoError(f"'{Path(source).name}' has no video frames")
    decoder = "NVDEC (PyNvVideoCodec), packets from the decoder child" if child.sends_packets else \
        "PyAV (FFmpeg) in the decoder child"
    result = VideoResult(out, info, done, size, np.asarray(shares, np.float32), session.labels, session.colours,
                         time.perf_counter() - start, spans,
                         {**session.describe(), "decoder": decoder, "x264_preset": preset})
    log.info("video: %d frames %d×%d → %s at %.2f× real time (%.1f s)", done, info.width, info.height, out.name,
             result.speed, result.seconds)
    return result
