"""torch-cuda's work before the network — decode (or upload), EXIF orientation, resize to the network's input — in
the request's thread on a stream of its own (batches: `Preparers`, see docs/benchmarks.md) or in the batch's."""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BadImageError
from ...image.decode import EncodedJpeg, decode
from ...profiling.spans import INFERENCE, SpanRecorder
from .ops import orient, resize_like_pil

if TYPE_CHECKING:
    import torch

    from ..contract import RenderJob
    from .jpeg import GpuJpegDecoder

log = logging.getLogger(__name__)

PREPARERS = 4  # requests preparing at once, each on its own stream with its own nvJPEG handles


@dataclass(frozen=True, eq=False)
class Prepared:
    """A request's pictures on the device: upright RGB, its host copy (None when decoded on the device) and the
    network's input (the upright image resized as Pillow would). Made on another stream: users `record_stream`."""

    image: torch.Tensor
    host_image: np.ndarray | None
    pixels: torch.Tensor
    decoder: str


def device_image(source: EncodedJpeg | np.ndarray, spans: SpanRecorder, device: torch.device,
                 decoder: GpuJpegDecoder | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Upright uint8 H×W×3 on the device (current stream), and the host's copy (None when decoded on the device)."""
    import torch

    if isinstance(source, EncodedJpeg):
        if decoder is not None:
            with spans.span("decode", INFERENCE, bytes=len(source.data)) as attrs:
                try:
                    image, attrs["decoder"] = decoder.decode(source)
                except RuntimeError as exc:  # Pillow accepted the header; let it judge the file
                    log.info("nvJPEG refused the upload (%s); decoding it on the host", exc)
                else:
                    attrs["orientation"] = source.header.orientation
                    return orient(image, source.header.orientation), None
        with spans.span("decode", INFERENCE):
            source = decode(source.data)
    with spans.span("upload", INFERENCE, size=list(source.shape[:2])):
        pinned = torch.empty(source.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = source  # the one host copy; the upload below is asynchronous
        return pinned.to(device, non_blocking=True), source


def upright_image(source: EncodedJpeg | np.ndarray | Prepared | torch.Tensor, spans: SpanRecorder,
                  device: torch.device, decoder: GpuJpegDecoder | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """`device_image`, or the image `Preparers.prepare` or a GPU video decoder (media.nvdec) made already."""
    import torch

    if isinstance(source, Prepared):  # made on a preparer's stream: the allocator must wait for ours too
        source.image.record_stream(torch.cuda.current_stream(device))
        return source.image, source.host_image
    if isinstance(source, torch.Tensor):  # an upright uint8 H×W×3 frame on this device, made on another stream
        source.record_stream(torch.cuda.current_stream(device))
        return source, None
    return device_image(source, spans, device, decoder)


def network_input(source: EncodedJpeg | np.ndarray | Prepared, image: torch.Tensor, device: torch.device,
                  input_size: tuple[int, int]) -> torch.Tensor:
    """The network's input pixels of a job: made by `Preparers.prepare` already, or resized now."""
    import torch

    if isinstance(source, Prepared):
        source.pixels.record_stream(torch.cuda.current_stream(device))
        return source.pixels
    return resize_like_pil(image, input_size)


def device_images(jobs: list[RenderJob], spans: SpanRecorder, device: torch.device, decoder: GpuJpegDecoder | None,
                  stream: torch.cuda.Stream) -> list[tuple[torch.Tensor, np.ndarray | None] | Exception]:
    """Each job's `upright_image` on `stream` (the current one), or the error of an upload its decoder refuses."""
    images: list[tuple[torch.Tensor, np.ndarray | None] | Exception] = []
    for job in jobs:
        if images and decoder is not None and isinstance(job.source, EncodedJpeg):
            # nvJPEG's hardware engine writes its output before the work already queued on its stream has run,
            # and that output may be a block the caching allocator just freed from a queued kernel (the
            # previous image's colour conversion or resize): let the stream drain first.
            stream.synchronize()
        try:
            images.append(upright_image(job.source, spans, device, decoder))
        except BadImageError as exc:
            images.append(exc)
    return images


class _Slot:
    def __init__(self, device: torch.device) -> None:
        import torch

        self.stream = torch.cuda.Stream(device)
        self.decoder: GpuJpegDecoder | None = None  # Pillow decodes until the GPU decoders are checked


class Preparers:
    """A few streams (each with its own JPEG decoder) that request threads take turns on."""

    def __init__(self, device: torch.device, input_size: tuple[int, int], count: int = PREPARERS) -> None:
        self.device, self.input_size = device, input_size
        self.slots = [_Slot(device) for _ in range(count)]
        self._free: queue.LifoQueue[_Slot] = queue.LifoQueue()
        for slot in self.slots:
            self._free.put(slot)

    def use_decoder(self, decoder: GpuJpegDecoder) -> None:
        """Give every slot a twin of the checked decoder (nvJPEG handles are not shared between threads): all of
        them or, if one cannot be made, none (a request's pixels must not depend on the slot it gets)."""
        twins: list[GpuJpegDecoder] = []
        try:
            for _ in self.slots:
                twins.append(decoder.twin(self.device))
        except Exception:
            for twin in twins:
                twin.close()
            raise
        for slot, twin in zip(self.slots, twins, strict=True):
            old, slot.decoder = slot.decoder, twin
            if old is not None:
                old.close()

    def prepare(self, source: EncodedJpeg | np.ndarray, spans: SpanRecorder) -> Prepared:
        """Decode or upload, orient and resize on a free slot's stream, and wait for it there: the result is
        complete when handed on, and the slot's next decode starts on an idle stream (nvJPEG's engines write their
        output before the work already queued on the stream has run)."""
        import torch

        slot = self._free.get()
        try:
            decoder = slot.decoder
            with torch.inference_mode(), torch.cuda.stream(slot.stream), \
                    spans.span("prepare", INFERENCE, on_device=True) as attrs:
                try:
                    image, host_image = device_image(source, spans, self.device, decoder)
                    pixels = resize_like_pil(image, self.input_size)
                finally:  # inside the span (it times the GPU work), and after an error too: the slot's next
                    slot.stream.synchronize()  # decode needs an idle stream
                attrs["decoder"] = decoder.name if decoder is not None and host_image is None else "host"
        finally:
            self._free.put(slot)
        return Prepared(image, host_image, pixels, attrs["decoder"])

    def close(self) -> None:
        for slot in self.slots:
            if slot.decoder is not None:
                slot.decoder.close()
                slot.decoder = None
