"""Video frames decoded by NVDEC: the decoder child demuxes (formats, limits) and sends Annex B packets, which decode
to PyAV's frames; on a GPU, NVDEC's frames match PyAV's within 2 levels and a job on torch-cuda uses them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

av = pytest.importorskip("av")

from segdemo.backends import torch_cuda  # noqa: E402
from segdemo.bench.clips import make_clip  # noqa: E402
from segdemo.media.nvdec import NVDEC_ENV, nvdec_reason  # noqa: E402
from segdemo.media.video_io import APP_LIMITS, CLI_LIMITS, BadVideoError, frames, open_video  # noqa: E402

from .test_video_safety import write  # noqa: E402

CUDA_REASON = torch_cuda.unavailable_reason()


def _nvdec_reason() -> str | None:
    if CUDA_REASON is not None:
        return f"needs a CUDA GPU: {CUDA_REASON}"
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as exc:  # noqa: BLE001 — not installed, or the driver lacks its video libraries
        return f"needs PyNvVideoCodec and NVDEC: {str(exc).splitlines()[0][:200]}"
    return None


needs_nvdec = pytest.mark.skipif(_nvdec_reason() is not None, reason=str(_nvdec_reason()))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 320, 240, 1.0, fps=10)


def _pyav_decoded(packets: list[bytes]) -> list[np.ndarray]:
    context = av.CodecContext.create("h264", "r")
    out = [f.to_ndarray(format="rgb24") for data in packets for f in context.decode(av.Packet(data))]
    return out + [f.to_ndarray(format="rgb24") for f in context.decode(None)]


def test_a_child_asked_for_packets_sends_annex_b_that_decodes_to_its_frames(clip):
    with open_video(clip, APP_LIMITS, "packets") as child:
        assert child.sends_packets and child.info.pix_fmt == "yuv420p" and child.info.codec == "h264"
        packets = list(child.packets())
    assert len(packets) == 10 and all(p.startswith((b"\0\0\0\1", b"\0\0\1")) for p in packets)  # Annex B
    decoded, expected = _pyav_decoded(packets), list(frames(clip))
    assert len(decoded) == len(expected) == 10 and all((a == b).all() for a, b in zip(decoded, expected, strict=True))


def test_packets_are_held_to_the_limits_as_frames_are(tmp_path):
    mkv = write(tmp_path / "live.mkv", "matroska", 30, options={"live": "1"})  # 3 s, no duration written
    with open_video(mkv, replace(APP_LIMITS, seconds=1.0), "packets") as child, pytest.raises(BadVideoError) as error:
        assert child.sends_packets
        list(child.packets())
    assert "'live.mkv' goes on past 1 s" in str(error.value) and "\n" not in str(error.value)


def test_streams_nvdec_does_not_take_are_decoded_in_the_child(tmp_path):
    path = tmp_path / "full.mp4"
    with av.open(str(path), "w") as container:  # 4:4:4: not what NVDEC's 4:2:0 path converts
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for k in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), k * 40, np.uint8), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with open_video(path, CLI_LIMITS, "packets") as child:
        assert not child.sends_packets
        assert [f.shape for f in child.frames()] == [(48, 64, 3)] * 3


def test_a_host_backend_or_the_switch_keeps_decoding_on_the_host(session_factory, monkeypatch):
    session = session_factory("random:tiny")
    assert nvdec_reason(session, APP_LIMITS) == "onnxruntime takes frames from the host"
    monkeypatch.setenv(NVDEC_ENV, "0")
    assert nvdec_reason(session, APP_LIMITS) == f"${NVDEC_ENV}=0"


@pytest.mark.gpu
@needs_nvdec
@pytest.mark.parametrize("rotation", [0, -90])
def test_nvdec_frames_are_pyavs_within_two_levels(tmp_path, rotation):
    from segdemo.media.nvdec import GpuVideoDecoder

    path = make_clip(tmp_path / "clip.mp4", 640, 480, 1.0, fps=30, rotation=rotation)
    with open_video(path, CLI_LIMITS, "packets") as child:
        decoder = GpuVideoDecoder(child.info, child.limits, child.name)
        got = [f.cpu().numpy() for f in decoder.frames(child.packets())]
    expected = list(frames(path, limits=CLI_LIMITS))
    assert len(got) == len(expected) == 30 and got[0].shape == expected[0].shape
    difference = np.stack([np.abs(a.astype(np.int16) - b) for a, b in zip(got, expected, strict=True)])
    assert difference.max() <= 2 and difference.mean() < 0.5, (difference.mean(), difference.max())


@pytest.mark.gpu
@needs_nvdec
def test_a_torch_cuda_job_decodes_on_the_gpu_with_the_hosts_shares(clip, build_dir, tmp_path, monkeypatch):
    from segdemo.media.video_job import segment_video
    from segdemo.pipeline import Session

    with Session("random:b0", "torch-cuda", "fp16", build_dir=build_dir, warm_up="off", max_batch=16) as session:
        on_gpu = segment_video(session, clip, tmp_path / "gpu.mp4", 0.5, CLI_LIMITS)
        monkeypatch.setenv(NVDEC_ENV, "0")
        on_host = segment_video(session, clip, tmp_path / "host.mp4", 0.5, CLI_LIMITS)
    assert on_gpu.facts["decoder"].startswith("NVDEC") and on_host.facts["decoder"].startswith("PyAV")
    assert on_gpu.frames == on_host.frames == 10
    assert np.abs(on_gpu.shares - on_host.shares).max() < 0.02  # pixels within 2 levels: a few flip class
