"""nvJPEG's planar Y/Cb/Cr decode, called through ctypes.

torchvision's GPU decode only returns nvJPEG's RGB, whose nearest-neighbour chroma upsampling is up to ~36 levels
away from Pillow's (libjpeg's triangle filter); the planes let torch_ops finish the decode exactly as libjpeg does.
The library comes with CUDA builds of torch/torchvision (pip's nvidia-nvjpeg) or a CUDA toolkit.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OUTPUT_YUV = 1  # nvjpegOutputFormat_t: planar, chroma at its stored (subsampled) size
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


def load() -> ctypes.CDLL:
    """The nvJPEG library, or OSError naming where it was looked for."""
    for name in _candidates() + _loaded_by_torchvision():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if lib.nvjpegGetProperty(MAJOR_VERSION, ctypes.byref(version)) == 0 and version.value >= 11:
            return lib
    raise OSError("libnvjpeg (CUDA ≥ 11) not found: pip install nvidia-nvjpeg-cu12 (or -cu13), or a CUDA toolkit")


class PlanarDecoder:
    """One nvJPEG handle and decode state; callers serialise decodes (the torch-cuda backend holds its lock)."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self.torch, self.device = torch, device
        self.lib = load()
        self.lib.nvjpegDecode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.c_int, ctypes.POINTER(_Image), ctypes.c_void_p]
        self.handle, self.state = ctypes.c_void_p(), ctypes.c_void_p()
        _check(self.lib.nvjpegCreateSimple(ctypes.byref(self.handle)), "nvjpegCreateSimple")
        _check(self.lib.nvjpegJpegStateCreate(self.handle, ctypes.byref(self.state)), "nvjpegJpegStateCreate")

    def planes(self, data: bytes, height: int, width: int) -> torch.Tensor:
        """uint8 [3, height, width] on the device: Y whole, Cb and Cr at their stored size in the top-left corner.

        Decodes on the current CUDA stream; `data` must stay alive until that stream has run the decode.
        """
        torch = self.torch
        out = torch.empty((3, height, width), dtype=torch.uint8, device=self.device)
        image = _Image()
        for channel in range(3):
            image.channel[channel] = out[channel].data_ptr()
            image.pitch[channel] = width
        stream = torch.cuda.current_stream(self.device).cuda_stream
        _check(self.lib.nvjpegDecode(self.handle, self.state, data, len(data), OUTPUT_YUV, ctypes.byref(image),
                                     ctypes.c_void_p(stream)), "nvjpegDecode")
        return out

    def close(self) -> None:
        if self.state:
            self.lib.nvjpegJpegStateDestroy(self.state)
            self.lib.nvjpegDestroy(self.handle)
            self.state = self.handle = None


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with nvjpegStatus {status}")
