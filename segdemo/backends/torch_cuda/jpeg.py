"""torch-cuda's GPU JPEG decoder: nvJPEG's planes (nvjpeg) finished as libjpeg does (ops), used only where a
start-up check shows Pillow's pixels; the JPEG engines first, the hybrid decoder for what they refuse."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, cast

import numpy as np

from ...image.decode import EncodedJpeg, JpegHeader, decode, plain_jpeg
from .ops import jpeg_planes_to_rgb, ycc_tables

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GPU_DECODE_ENV = "SEGDEMO_GPU_DECODE"  # "0": decode every upload with Pillow on the host
MAX_MEAN_DIFFERENCE = 0.5  # only the inverse DCT may round differently from libjpeg's: a fraction of a level


class GpuJpegDecoder:
    """A chain of checked nvJPEG decoders; `decode` returns upright-to-be RGB on the device and who decoded it."""

    def __init__(self, decoders: list, colour, tables: torch.Tensor, difference: float,
                 samples: list[tuple[torch.Tensor, tuple[int, int]]], colours: list | None = None) -> None:
        """`samples`: planes of the check's sample JPEGs with their subsampling, kept for `compile_colour`;
        `colours`: a twin's one-item list shared with its original, so both switch to the compiled conversion."""
        self.decoders, self._tables, self.difference = decoders, tables, difference
        self._colours = colours if colours is not None else [colour]
        self.samples = samples

    def twin(self, device: torch.device) -> GpuJpegDecoder:
        """The same checked kinds with nvJPEG handles of their own, for another thread (handles and decode states
        are not shared); the colour conversion is shared, compiled or not."""
        return GpuJpegDecoder([type(planar)(device) for planar in self.decoders], None, self._tables,
                              self.difference, [], self._colours)

    @property
    def name(self) -> str:
        kinds = ", ".join(planar.name.removeprefix("nvJPEG ") for planar in self.decoders)
        return f"nvJPEG ({kinds}) planes + libjpeg colour"

    def decode(self, jpeg: EncodedJpeg) -> tuple[torch.Tensor, str]:
        """H×W×3 uint8 RGB on the device, as stored (EXIF orientation not applied); the last decoder's errors
        propagate."""
        height, width = jpeg.header.height, jpeg.header.width
        for planar in self.decoders[:-1]:
            try:
                planes = planar.planes(jpeg.data, height, width)
            except RuntimeError as exc:  # e.g. a progressive file on the JPEG engines
                log.debug("%s refused the upload (%s); trying the next decoder", planar.name, exc)
                continue
            return self._colours[0](planes, jpeg.header.sampling, self._tables), planar.name
        last = self.decoders[-1]
        return self._colours[0](last.planes(jpeg.data, height, width), jpeg.header.sampling, self._tables), \
            last.name

    def compile_colour(self, device: torch.device) -> None:
        """Compile the colour conversion for every kind of the sample planes on its own stream and switch to it
        once it matches the eager function on them. ~50 small integer ops, launched one by one, cost the host more
        than the decode; compiled they are a few fused kernels. Takes seconds: callers run it beside requests, which
        use the eager function. Requests never compile: a kind the samples did not cover runs the eager function."""
        import torch

        samples, self.samples = self.samples, []

        try:
            compiled = _compiled_colour()
            stream = torch.cuda.Stream(device)
            with torch.inference_mode(), torch.cuda.stream(stream):
                for planes, sampling in samples:
                    if not torch.equal(compiled(planes, sampling, self._tables),
                                       jpeg_planes_to_rgb(planes, sampling, self._tables)):
                        raise RuntimeError(f"the compiled colour conversion differs for {sampling} subsampling")
            stream.synchronize()
        except Exception as exc:  # noqa: BLE001 — the eager function stays; it gives the same pixels
            log.warning("compiled JPEG colour conversion not used (%s: %s)", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            return
        # Run-only: dynamo's compiled code where its guards pass, the function itself where they do not — never a
        # compilation on a visitor's request (seconds), and never one entered from several request threads at once.
        self._colours[0] = torch._dynamo.run(compiled)
        log.info("JPEG colour conversion compiled; requests use it from now on")

    def close(self) -> None:
        for planar in self.decoders:
            planar.close()
        self.decoders = []


def checked_decoder(device: torch.device, stream: torch.cuda.Stream) -> GpuJpegDecoder | None:
    """The decoders that give Pillow's pixels for real JPEGs here, chained; None if there are none (or it is off).
    Its colour conversion is the eager function until the caller runs `compile_colour`."""
    if os.environ.get(GPU_DECODE_ENV, "1") == "0":
        return None
    import torch

    from .nvjpeg import HardwareDecoder, PlanarDecoder

    tables = torch.from_numpy(ycc_tables()).to(device)
    samples: list[tuple[torch.Tensor, tuple[int, int]]]
    decoders, worst, samples = [], 0.0, []
    for kind in (HardwareDecoder, PlanarDecoder):
        planar, mean, samples = _checked(kind, device, stream, tables) or (None, 0.0, samples)
        if planar is not None:
            decoders.append(planar)
            worst = max(worst, mean)
    if not decoders:
        log.info("JPEGs are decoded by Pillow on the host")
        return None
    decoder = GpuJpegDecoder(decoders, jpeg_planes_to_rgb, tables, worst, samples)
    return decoder


def _checked(kind, device, stream, tables):
    """(a `kind` decoder that gives Pillow's pixels here, its mean difference to Pillow's pixels, the sample planes
    it made), or None."""
    try:
        planar = kind(device)
    except (OSError, RuntimeError, AttributeError) as exc:
        log.info("%s is not available here: %s", kind.name, exc)
        return None
    try:
        mean, samples = _difference_to_pillow(planar, tables, stream)
    except Exception as exc:  # noqa: BLE001
        log.warning("%s does not work here (%s: %s)", kind.name, type(exc).__name__, exc)
        planar.close()
        return None
    if mean > MAX_MEAN_DIFFERENCE:
        log.warning("%s decodes test JPEGs %.2f levels away from Pillow on average; not used", kind.name, mean)
        planar.close()
        return None
    return planar, mean, samples


def _difference_to_pillow(planar, tables: torch.Tensor,
                          stream: torch.cuda.Stream) -> tuple[float, list[tuple[torch.Tensor, tuple[int, int]]]]:
    """(worst mean absolute difference to Pillow's pixels over the sample JPEGs, copies of their planes)."""
    import torch

    worst, samples = 0.0, []
    for data, header, pillow in _sample_jpegs():
        with torch.inference_mode(), torch.cuda.stream(stream):
            planes = planar.planes(data, header.height, header.width).clone()  # the decoder reuses its buffer
            got = jpeg_planes_to_rgb(planes, header.sampling, tables).cpu().numpy()
        samples.append((planes, header.sampling))
        worst = max(worst, float(np.abs(got.astype(np.int16) - pillow).mean()))
    return worst, samples


@lru_cache(maxsize=1)
def _compiled_colour():
    """One compiled colour conversion per process: dynamo keeps its compilations on the function's code, and each
    torch.compile wrapper adds its own, so a second session's wrapper (a reloaded backend, the load bench's batched
    run) counted towards dynamo's recompile limit and could fall back to launching ~50 kernels an image."""
    import torch

    # One compilation per kind of sample (subsampling × odd or even height and width): more than dynamo's default
    # limit of eight, after which it would stop compiling the function for good.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(_sample_jpegs()))
    return torch.compile(jpeg_planes_to_rgb, dynamic=True)


@lru_cache(maxsize=1)
def _sample_jpegs() -> tuple[tuple[bytes, JpegHeader, np.ndarray], ...]:
    """Small colour JPEGs (gradients, a soft blob, fine stripes) in 4:2:0, 4:2:2 and 4:4:4, each with odd and
    even heights and widths (the compiled colour conversion is specialised on their parity), with their headers and
    Pillow's pixels (made once: every decoder is checked against them)."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:50, 0:68].astype(np.float32)
    blob = 120 * np.exp(-((x - 40) ** 2 + (y - 20) ** 2) / 200)
    image = np.stack([x * 3 + blob, y * 4 + 40 + 30 * np.sin(x), 180 - blob], axis=2).clip(0, 255).astype(np.uint8)
    samples: list[tuple[bytes, JpegHeader, np.ndarray]] = []
    for subsampling in (2, 1, 0):
        for height, width in ((49, 67), (50, 68), (49, 68), (50, 67)):
            buffer = io.BytesIO()
            Image.fromarray(image[:height, :width]).save(buffer, format="JPEG", quality=90, subsampling=subsampling)
            data = buffer.getvalue()
            samples.append((data, cast("JpegHeader", plain_jpeg(data)), decode(data)))  # Pillow's baseline: plain
    return tuple(samples)
