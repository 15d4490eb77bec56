"""The TensorRT runners' CUDA layer (backends/tensorrt/cuda.py) on a real GPU, through the installed binding alone:
no torch and no TensorRT. Upload, download, pinned memory, device copies, event timing, and a call given the stream's
raw handle (as execute_async_v3 is) ordered with the copies around it. Each test skips with the layer's own reason
where it cannot run (no binding, no GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from segdemo.backends.tensorrt import cuda
from segdemo.backends.tensorrt.cuda import DeviceBuffer, Event, PinnedBuffer, Stream

pytestmark = pytest.mark.gpu

MB = 1 << 20


def _reason() -> str | None:
    return cuda.binding_reason() or cuda.binding().device_reason()


REASON = _reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU and binding: {REASON}")


def _runtime():
    """cuda-python's runtime module, for what the tests check behind the layer's back."""
    if cuda.binding().name != "cuda-python":
        pytest.skip(f"checked through cuda-python's runtime API; the binding here is {cuda.binding().name}")
    from cuda.bindings import runtime

    return runtime


def _filled(nbytes: int, seed: int) -> PinnedBuffer:
    host = PinnedBuffer(nbytes)
    host.array[:] = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    return host


@needs_gpu
def test_upload_device_copy_download_round_trip():
    nbytes = 8 * MB + 13  # not a multiple of anything the copies might round to
    source, back = _filled(nbytes, 0), PinnedBuffer(nbytes)
    first, second = DeviceBuffer(nbytes), DeviceBuffer(nbytes)
    stream = Stream()
    stream.upload(first, source, nbytes)
    stream.copy(second, first, nbytes)
    stream.download(back, second, nbytes)
    stream.synchronize()
    assert np.array_equal(back.array, source.array)


@needs_gpu
def test_copies_at_offsets_move_exactly_their_bytes():
    source, back = _filled(4096, 1), PinnedBuffer(4096)
    back.array[:] = 0
    device = DeviceBuffer(4096)
    stream = Stream()
    stream.upload(device, source, 1000, dst_offset=512, src_offset=100)
    stream.download(back, device, 1000, dst_offset=2000, src_offset=512)
    stream.synchronize()
    assert np.array_equal(back.array[2000:3000], source.array[100:1100])
    assert not back.array[:2000].any() and not back.array[3000:].any()
    with pytest.raises(ValueError, match="do not fit"):
        stream.upload(device, source, 1000, dst_offset=3500)


@needs_gpu
def test_pinned_buffers_are_page_locked_and_device_buffers_on_the_gpu():
    rt = _runtime()
    host, device = PinnedBuffer(MB), DeviceBuffer(MB)
    for pointer, kind in ((host.array.ctypes.data, rt.cudaMemoryType.cudaMemoryTypeHost),
                          (device.address(), rt.cudaMemoryType.cudaMemoryTypeDevice)):
        error, attributes = rt.cudaPointerGetAttributes(pointer)
        assert error == rt.cudaError_t.cudaSuccess and attributes.type == kind
    assert device.address() % 256 == 0  # TensorRT's tensor addresses must be aligned
    assert host.view(np.float32, (2, 4), offset=32).shape == (2, 4)


@needs_gpu
def test_closing_a_device_buffer_returns_its_memory():
    rt = _runtime()

    def free() -> int:
        error, available, _ = rt.cudaMemGetInfo()
        assert error == rt.cudaError_t.cudaSuccess
        return available

    before = free()
    buffer = DeviceBuffer(1024 * MB)
    held = free()
    buffer.close()
    assert held <= before - 1000 * MB and free() >= held + 1000 * MB


@needs_gpu
def test_events_time_the_stream_in_consecutive_phases():
    nbytes = 64 * MB
    host, device = _filled(nbytes, 2), DeviceBuffer(nbytes)
    stream = Stream()
    events = [Event() for _ in range(3)]
    events[0].record(stream)
    stream.upload(device, host, nbytes)
    events[1].record(stream)
    stream.download(host, device, nbytes)
    events[2].record(stream)
    stream.synchronize()
    upload, download = events[0].elapsed_ms(events[1]), events[1].elapsed_ms(events[2])
    assert upload > 0 and download > 0
    assert events[0].elapsed_ms(events[2]) == pytest.approx(upload + download, rel=1e-3, abs=1e-3)


@needs_gpu
def test_a_call_given_the_raw_stream_handle_runs_in_order_with_the_copies():
    """What the runners hand execute_async_v3: an int stream handle. A stand-in for the engine fills the input buffer
    through that handle; the download enqueued after it must see its bytes, the upload before it must not win."""
    rt = _runtime()
    nbytes = 32 * MB
    host, device = _filled(nbytes, 3), DeviceBuffer(nbytes)
    stream = Stream()
    assert isinstance(stream.handle, int) and stream.handle != 0  # our own stream, not the legacy default one
    for value in (7, 201):
        stream.upload(device, host, nbytes)
        (error,) = rt.cudaMemsetAsync(device.address(), value, nbytes, rt.cudaStream_t(stream.handle))
        assert error == rt.cudaError_t.cudaSuccess
        stream.download(host, device, nbytes)
        stream.synchronize()
        assert (host.array == value).all()
