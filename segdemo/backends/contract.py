"""The backend contract: what every backend does, and the optional capability of doing a whole request on a device.

A backend is created once per session (loading: find or build its artifact, deserialise it, check it) and then
`run` many times; `close` (or leaving a `with` block) releases it. `facts()` says what the app's Engine tab and the
bench show about it. Backends that can also decode, resize, colour and count on their device implement
`DeviceRenderer` besides; the pipeline asks `isinstance(backend, DeviceRenderer)`, never `hasattr`. Backends created
with `max_batch` > 1 implement `BatchRunner`: one engine call for several requests, each with its own output size.
A `DeviceRenderer` that batches implements `BatchRenderer` too: several whole requests (`RenderJob`s) on the device
with one network call, each giving what `render` gives it alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ..image.decode import EncodedJpeg
    from ..image.preprocess import ModelInput
    from ..model.source import ModelSource
    from ..profiling.spans import SpanRecorder


@dataclass(frozen=True)
class LoadContext:
    """What any backend's loading may use (each takes what it needs): the model, the artifact folder, progress,
    whether the session will serve many requests (then background compilations pay off; a one-shot CLI run's don't),
    and whether requests may bring encoded images to decode on the device (an engine tier's bring pixels)."""

    source: ModelSource | None = None
    build_dir: Path | None = None
    progress: Callable[[float, str], None] | None = None
    long_lived: bool = True
    encoded_images: bool = True


class Backend(ABC):
    """Runs the fused graph: uint8 RGB resized to the network's input → uint8 class map of the requested size."""

    name: ClassVar[str]
    device: str  # "cpu" or "cuda" (a class attribute; triton's names its server, per instance)
    precision: str  # what it actually runs: "fp32" or "fp16"
    # Whether calls may overlap: a server queues (and batches) them itself, so the session's one-at-a-time engine slot
    # would only keep its queue short.
    concurrent: ClassVar[bool] = False

    @abstractmethod
    def run(self, model_input: ModelInput, spans: SpanRecorder, detailed: bool = False) -> np.ndarray:
        """Return the uint8 class map of shape `model_input.out_size`; `detailed` adds per-layer spans."""

    @abstractmethod
    def close(self) -> None:
        """Release the runtime's resources (safe to call twice)."""

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for work the backend started in the background at load (e.g. compilations); True once none is left."""
        return True

    def facts(self) -> dict[str, Any]:
        """Name → value of what is worth showing about this backend (engine file, cache entry, memory, …)."""
        return {}

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Rendered:
    """A request done on a device, every array bit-identical to what the host pipeline makes (pipeline._on_host),
    given the same decoded pixels. An `encoder_only` job's gets only its counts and the overlay for an encoder: the
    arrays it was not sent are None (every one is set for other jobs)."""

    class_map: np.ndarray | None  # uint8 ids at the original (upright) size: restore_size of the out_size map
    counts: np.ndarray  # pixels per class id of class_map, int64 [256]
    display_image: np.ndarray | None  # RGB at display size (Pillow's bilinear resize of the decoded image)
    display_map: np.ndarray | None  # restore_size(out_size map, display size)
    # visuals.overlay(display_image, colour_mask(display_map), opacity); an encoder_only job's only where no I420 is
    display_overlay: np.ndarray | None
    opacity: float
    overlay_i420: np.ndarray | None = None  # asked for by RenderJob.i420: the overlay as an H.264 encoder takes it


class DeviceRenderer(ABC):
    """The optional capability: the whole request (decode or upload, EXIF orientation, resize, network, class map,
    counts, display-size picture and overlay) on the backend's device."""

    @abstractmethod
    def renders(self, out_size: tuple[int, int]) -> bool:
        """Whether `render` can make a class map of this (height, width)."""

    @property
    @abstractmethod
    def decodes_jpeg(self) -> bool:
        """Whether `render` takes plain JPEG files (decode.EncodedJpeg) and decodes them on the device."""

    @abstractmethod
    def render(self, source: EncodedJpeg | np.ndarray, spans: SpanRecorder, opacity: float,
               out_size: tuple[int, int], display: tuple[int, int]) -> Rendered:
        """The request on the device; `source` is a plain JPEG or upright RGB pixels."""


class BatchRunner(ABC):
    """The optional capability: several requests in one engine call — the network runs batched at the input size,
    the upsampling and argmax per image at its own output size. A batch of one gives the same pixels as any batch."""

    max_batch: int

    @abstractmethod
    def run_batch(self, inputs: list[ModelInput], spans: SpanRecorder) -> list[np.ndarray]:
        """The uint8 class map of each input (len(inputs) ≤ max_batch), in order; the batch's spans go to `spans`."""


@dataclass(frozen=True, eq=False)
class RenderJob:
    """One request for `BatchRenderer.render_batch`: the arguments `DeviceRenderer.render` takes."""

    source: Any  # a plain JPEG (EncodedJpeg, when the renderer decodes JPEGs), upright RGB pixels, or `prepare`'s
    opacity: float
    out_size: tuple[int, int]  # (height, width) of the class map the network's output is upsampled to
    display: tuple[int, int]  # (height, width) of the pictures shown
    # Also the overlay as I420 (yuv420p planes, BT.601 limited range; cropped to even sides), for a video's encoder:
    # where the renderer makes it (the display's height, made even, a multiple of 4), Rendered.overlay_i420 holds it.
    i420: bool = False
    # Only what a video's encoder and its class shares need comes back (the counts, and the overlay as I420 — RGB
    # where no I420 is made): a 1080p frame's maps and display picture would be six times the download.
    encoder_only: bool = False


class BatchRenderer(DeviceRenderer):
    """The optional capability: several whole requests on the device, the network run once for all of them.

    Each job gives what `render` gives it alone, whatever else rides in the batch: every step after the network bit
    for bit; the batched network matches the single one as far as the device's kernels for another batch size round
    alike (cuDNN may pick other algorithms). Every job must be one that `renders` accepts.
    """

    max_batch: int

    @abstractmethod
    def prepare(self, job: RenderJob, spans: SpanRecorder) -> RenderJob:
        """The job's work before the network (decode or upload, resize), done in the request's own thread beside
        the batch on the device; returns the job `render_batch` takes (maybe the same). Raises BadImageError for an
        upload its decoder refuses."""

    @abstractmethod
    def render_batch(self, jobs: list[RenderJob], spans: SpanRecorder) -> list[Rendered | Exception]:
        """Each job's result in order (len(jobs) ≤ max_batch); a job refused on its own (an upload its decoder
        rejects) gets that error in its place and the others still render; the batch's spans go to `spans`."""
