"""Video frames decoded on the GPU (NVDEC through PyNvVideoCodec) for a backend that renders device frames: the
decoder child still opens and demuxes the file (allowed formats, limits) and sends the stream's packets; here NVDEC
decodes them and the NV12 surfaces become upright RGB on the device, as PyAV's frames would be (ops.nv12_to_rgb).

Isolation: the container's parsing — FFmpeg's demuxers, the largest part of what reads a visitor's bytes — stays in
the child; the codec's bitstream is parsed by the driver's NVDEC parser in this process. Where that is not wanted,
$SEGDEMO_NVDEC=0 keeps every decode in the child (PyAV), as does any machine without PyNvVideoCodec or a GPU backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .video_decode import MATRICES, check_size
from .video_limits import BadVideoError, VideoInfo, VideoLimits

if TYPE_CHECKING:
    import torch

    from ..pipeline import Session

NVDEC_ENV = "SEGDEMO_NVDEC"  # "0": decode on the host (PyAV, in the decoder child) even where NVDEC is usable


def nvdec_likely(backend: str) -> bool:
    """Whether a job on `backend` (a --backend value: "auto" may become torch-cuda, the one backend that takes device
    frames) may decode with NVDEC — said before its session loads, without importing PyNvVideoCodec; nvdec_reason
    decides."""
    from importlib.util import find_spec

    return os.environ.get(NVDEC_ENV, "1") != "0" and backend in ("auto", "torch-cuda") and \
        find_spec("PyNvVideoCodec") is not None


def nvdec_reason(session: Session, limits: VideoLimits) -> str | None:
    """None if NVDEC can decode frames for `session`'s backend (of any size `limits` let through), else why not."""
    from ..backends import BatchRenderer
    from ..image.preprocess import output_size

    if os.environ.get(NVDEC_ENV, "1") == "0":
        return f"${NVDEC_ENV}=0"
    backend = getattr(session, "backend", None)  # (a job refused before it reaches an engine may come without one)
    if not (isinstance(backend, BatchRenderer) and getattr(backend, "device_frames", False)):
        return f"{getattr(backend, 'name', 'no backend')} takes frames from the host"
    if not backend.renders(output_size((limits.side, limits.side), session.max_side)):
        return "frames larger than the device renders"
    try:
        import PyNvVideoCodec  # noqa: F401 — its import loads the driver's video libraries, which may be absent
    except Exception as exc:  # noqa: BLE001 — ImportError, or its RuntimeError when the driver lacks NVDEC/NVENC
        return f"PyNvVideoCodec is not usable here (pip install pynvvideocodec): {str(exc).splitlines()[0][:160]}"
    return None


class GpuVideoDecoder:
    """One job's NVDEC session: packets in (decode order), upright RGB frames on the GPU out (display order)."""

    def __init__(self, info: VideoInfo, limits: VideoLimits, name: str, device: int = 0) -> None:
        import PyNvVideoCodec as nvc
        import torch

        self.torch, self.info, self.limits, self.name = torch, info, limits, name
        self.cuda = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self.cuda)
        codec = {"h264": nvc.cudaVideoCodec.H264, "hevc": nvc.cudaVideoCodec.HEVC}[info.codec]
        self.nvc = nvc
        self.decoder = nvc.CreateDecoder(gpuid=device, codec=codec, cudastream=self.stream.cuda_stream,
                                         usedevicememory=True)
        # As stored: the frames are turned upright after the conversion
        self.size = (info.width, info.height) if info.rotation % 180 else (info.height, info.width)
        self.matrix = MATRICES[info.colorspace]
        self.count = 0

    def frames(self, packets: Iterator[bytes]) -> Iterator[torch.Tensor]:
        """Upright uint8 H×W×3 frames on the GPU, each complete when handed on (users `record_stream`)."""
        empty = np.zeros(1, np.uint8)
        for data in _with_flush(packets):
            array = np.frombuffer(data, np.uint8) if data else empty
            packet = self.nvc.PacketData()
            packet.bsl_data, packet.bsl = array.ctypes.data, len(data)
            try:
                decoded = self.decoder.Decode(packet)
            except Exception as exc:  # noqa: BLE001 — the driver's parser refused the bitstream
                raise BadVideoError(f"{self.name} is damaged: the GPU decoder stopped after {self.count} frames "
                                    f"({type(exc).__name__})") from None
            if not decoded:
                continue
            with self.torch.cuda.stream(self.stream):
                out = [self._upright(frame) for frame in decoded]
            # NVDEC reuses its surfaces for the packets that follow: every conversion is done before the next one
            self.stream.synchronize()
            yield from out

    def _upright(self, frame: Any) -> torch.Tensor:
        from ..backends.torch_cuda.ops import nv12_to_rgb, resize_like_pil

        torch = self.torch
        self.count += 1
        nv12 = torch.from_dlpack(frame)
        height, width = nv12.shape[0] * 2 // 3, nv12.shape[1]
        rgb = nv12_to_rgb(nv12, height, width, self.matrix)
        if (height, width) != self.size:
            # A stream may change size mid-way: beyond the limits it is refused, within them it is scaled to the
            # first size (as the child's PyAV decoding does), which the engine's batch and the encoder assume.
            check_size(self.name, width, height, self.limits, f" from frame {self.count}")
            rgb = resize_like_pil(rgb, self.size)
        if self.info.rotation:
            rgb = torch.rot90(rgb, self.info.rotation // 90, dims=(0, 1)).contiguous()
        return rgb


def _with_flush(packets: Iterator[bytes]) -> Iterator[bytes]:
    """The packets, then the empty one that tells NVDEC the stream ended (it then hands out what it holds)."""
    yield from packets
    yield b""
