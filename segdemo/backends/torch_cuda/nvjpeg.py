"""nvJPEG's planar Y/Cb/Cr decode through ctypes, on the GPU's JPEG engines or hybrid (Huffman on the host); the
library comes with CUDA builds of torch/torchvision (pip's nvidia-nvjpeg) or a CUDA toolkit."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Planes, not nvJPEG's (or torchvision's) RGB: its nearest-neighbour chroma upsampling is not libjpeg's triangle
# filter, so ops finishes the decode as libjpeg does (docs/benchmarks.md).
OUTPUT_YUV = 1  # nvjpegOutputFormat_t: planar, chroma at its stored (subsampled) size
BACKEND_HARDWARE = 3  # nvjpegBackend_t
FLAGS_HW_DECODE_NO_PIPELINE = 1
MAJOR_VERSION = 0  # libraryPropertyType


class _Image(ctypes.Structure):
    """nvjpegImage_t (CUDA ≥ 11: size_t pitches)."""

    _fields_ = [("channel", ctypes.c_void_p * 4), ("pitch", ctypes.c_size_t * 4)]


def _candidates() -> list[str]:
    names = ["libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11", "libnvjpeg.so"]
    for root in sys.path:  # pip's nvidia-* packages and torchvision's bundled copy
        for pattern in ("nvidia/*/lib/libnvjpeg.so*", "nvidia/*/*/lib/libnvjpeg.so*", "torchvision.libs/libnvjpeg*"):
            names += sorted(glob.glob(os.path.join(root, pattern)))
    return names


def _loaded_by_torchvision() -> list[str]:
    """Where torchvision's image extension found libnvjpeg (its RPATH), if torchvision is installed."""
    try:
        import torchvision.io.image  # noqa: F401 — loads the extension and, with it, libnvjpeg
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libnvjpeg" in line})
    except Exception:  # noqa: BLE001 — no torchvision, no /proc: just fewer places to look
        return []


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """The nvJPEG library (searched once), or OSError naming where it was looked for."""
    for name in _candidates() + _loaded_by_torchvision():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if lib.nvjpegGetProperty(MAJOR_VERSION, ctypes.byref(version)) == 0 and version.value >= 11:
            return lib
    raise OSError("libnvjpeg (CUDA ≥ 11) not found: pip install nvidia-nvjpeg-cu12 (or -cu13), or a CUDA toolkit")


class _Decoder:
    """One nvJPEG handle and decode state; callers serialise decodes (the torch-cuda backend holds its lock)."""

    name = ""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.torch, self.device = torch, device
        self.lib = load()
        self.handle, self.state = ctypes.c_void_p(), ctypes.c_void_p()

    def _output(self, height: int, width: int) -> tuple[torch.Tensor, _Image, ctypes.c_void_p]:
        """The planes tensor, its nvjpegImage_t and the current CUDA stream."""
        out = self.torch.empty((3, height, width), dtype=self.torch.uint8, device=self.device)
        image = _Image()
        for channel in range(3):
            image.channel[channel] = out[channel].data_ptr()
            image.pitch[channel] = width
        return out, image, ctypes.c_void_p(self.torch.cuda.current_stream(self.device).cuda_stream)

    def close(self) -> None:
        if self.state:
            self.lib.nvjpegJpegStateDestroy(self.state)
            self.state = None  # type: ignore[assignment]  # closed: nothing uses it after close
        if self.handle:
            self.lib.nvjpegDestroy(self.handle)
            self.handle = None  # type: ignore[assignment]  # closed: nothing uses it after close


class PlanarDecoder(_Decoder):
    """nvjpegDecode: Huffman decoding on the host (the calling thread), the rest on the GPU; any GPU, any JPEG."""

    name = "nvJPEG hybrid"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.lib.nvjpegDecode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.c_int, ctypes.POINTER(_Image), ctypes.c_void_p]
        _check(self.lib.nvjpegCreateSimple(ctypes.byref(self.handle)), "nvjpegCreateSimple")
        _check(self.lib.nvjpegJpegStateCreate(self.handle, ctypes.byref(self.state)), "nvjpegJpegStateCreate")

    def planes(self, data: bytes, height: int, width: int) -> torch.Tensor:
        """uint8 [3, height, width] on the device: Y whole, Cb and Cr at their stored size in the top-left corner.

        Decodes on the current CUDA stream; `data` must stay alive until that stream has run the decode.
        """
        out, image, stream = self._output(height, width)
        _check(self.lib.nvjpegDecode(self.handle, self.state, data, len(data), OUTPUT_YUV, ctypes.byref(image),
                                     stream), "nvjpegDecode")
        return out


class HardwareDecoder(_Decoder):
    """The GPU's JPEG engines (where it has them) through the batched API, one image a batch; baseline single-scan
    JPEGs only: progressive files raise RuntimeError (callers fall back to PlanarDecoder)."""

    # The host only queues the work here, where PlanarDecoder decodes Huffman codes itself (docs/benchmarks.md).
    name = "nvJPEG hardware"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.lib.nvjpegDecodeBatched.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(_Image), ctypes.c_void_p]
        # No pipelining: each call decodes its own image, nothing is held back for a later batch.
        _check(self.lib.nvjpegCreateEx(BACKEND_HARDWARE, None, None, FLAGS_HW_DECODE_NO_PIPELINE,
                                       ctypes.byref(self.handle)), "nvjpegCreateEx(hardware)")
        _check(self.lib.nvjpegJpegStateCreate(self.handle, ctypes.byref(self.state)), "nvjpegJpegStateCreate")
        self._initialise()

    def _initialise(self) -> None:
        _check(self.lib.nvjpegDecodeBatchedInitialize(self.handle, self.state, 1, 1, OUTPUT_YUV),
               "nvjpegDecodeBatchedInitialize")

    def planes(self, data: bytes, height: int, width: int) -> torch.Tensor:
        """As PlanarDecoder.planes."""
        out, image, stream = self._output(height, width)
        status = self.lib.nvjpegDecodeBatched(self.handle, self.state, (ctypes.c_char_p * 1)(data),
                                              (ctypes.c_size_t * 1)(len(data)), ctypes.byref(image), stream)
        if status != 0:
            self._initialise()  # the documented recovery after a failed batch
            _check(status, "nvjpegDecodeBatched")
        return out


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with nvjpegStatus {status}")
