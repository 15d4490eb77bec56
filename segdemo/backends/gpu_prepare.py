"""torch-cuda's work before the network — decode (or upload), EXIF orientation, resize to the network's input — in
the request's own thread on a CUDA stream of its own, so the next batch's images are made while the GPU runs this
batch's network (on an H200 under 32 clients, decoding inside the batch took 21 of its 57 ms).
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..decode import EncodedJpeg, decode
from ..spans import INFERENCE, SpanRecorder
from .torch_ops import orient, resize_like_pil

if TYPE_CHECKING:
    import torch

    from .gpu_jpeg import GpuJpegDecoder

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
