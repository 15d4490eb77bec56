"""GPU memory, streams and timing events for the TensorRT runners, without PyTorch: `DeviceBuffer`, `PinnedBuffer`,
`Stream` (copies, ordered) and `Event` (timing), over one CUDA binding chosen once per process (`binding`).

cuda-python (`cuda.bindings.runtime`) is the default: NVIDIA's maintained binding, wheels on PyPI, what TensorRT's own
samples use, and the runtime API's primary context is the one TensorRT runs in; pycuda is used when it is the one
installed (it is source-only on PyPI and builds against a CUDA toolkit).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from ...errors import SegdemoError
from ...optional import MissingPackageError

PACKAGE = "cuda-python"  # what the install hint names: the default binding
NO_BINDING = (f"neither cuda-python nor pycuda is installed (TensorRT's GPU buffers, streams and events): "
              f"pip install {PACKAGE}")


class CudaError(SegdemoError):
    """A CUDA call failed; the message names the call and CUDA's own error."""


class Binding(Protocol):
    """The few CUDA operations the buffers, streams and events need, in one binding's terms."""

    name: str

    def device_reason(self) -> str | None: ...
    def alloc(self, nbytes: int) -> tuple[int, Callable[[], None]]: ...
    def alloc_pinned(self, nbytes: int) -> tuple[np.ndarray, Callable[[], None]]: ...
    def stream(self) -> tuple[Any, int, Callable[[], None]]: ...
    def event(self) -> tuple[Any, Callable[[], None]]: ...
    def to_device(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def to_host(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def on_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...
    def synchronize(self, stream: Any) -> None: ...


class CudaPython:
    """cuda-python's runtime API (cuda.bindings.runtime; cuda.cudart before 12.6): calls return (error, *values)."""

    name = "cuda-python"

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def _call(self, name: str, *args: Any) -> Any:
        error, *values = getattr(self.rt, name)(*args)
        if error != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name} failed: {self.describe(error)}")
        return values[0] if len(values) == 1 else None

    def describe(self, error: Any) -> str:
        _, text = self.rt.cudaGetErrorString(error)
        return f"{getattr(error, 'name', error)} ({text.decode() if isinstance(text, bytes) else text})"

    def device_reason(self) -> str | None:
        error, count = self.rt.cudaGetDeviceCount()
        if error != self.rt.cudaError_t.cudaSuccess:
            return f"cuda-python: {self.describe(error)}"
        return None if count else "cuda-python: no CUDA device"

    def alloc(self, nbytes: int) -> tuple[int, Callable[[], None]]:
        pointer = int(self._call("cudaMalloc", nbytes))
        return pointer, functools.partial(self.rt.cudaFree, pointer)

    def alloc_pinned(self, nbytes: int) -> tuple[np.ndarray, Callable[[], None]]:
        pointer = int(self._call("cudaMallocHost", nbytes))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(pointer))
        return array, functools.partial(self.rt.cudaFreeHost, pointer)

    def stream(self) -> tuple[Any, int, Callable[[], None]]:
        stream = self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)
        return stream, int(stream), functools.partial(self.rt.cudaStreamDestroy, stream)

    def event(self) -> tuple[Any, Callable[[], None]]:
        event = self._call("cudaEventCreateWithFlags", self.rt.cudaEventDefault)  # timing on
        return event, functools.partial(self.rt.cudaEventDestroy, event)

    def to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def on_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)

    def record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", start, end))

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)


class PyCuda:
    """pycuda's driver API in the device's primary context (the runtime API's, so TensorRT's), made current around
    each call: pycuda contexts belong to a thread, and requests arrive on several."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.drv = driver
        self._context: Any = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        with self._lock:
            if self._context is None:
                self.drv.init()
                self._context = self.drv.Device(0).retain_primary_context()
        self._context.push()
        try:
            yield
        except self.drv.Error as exc:
            raise CudaError(f"pycuda: {exc}") from None
        finally:
            self.drv.Context.pop()

    def device_reason(self) -> str | None:
        try:
            self.drv.init()
            return None if self.drv.Device.count() else "pycuda: no CUDA device"
        except self.drv.Error as exc:
            return f"pycuda: {exc}"

    def _released(self, free: Callable[[], None]) -> Callable[[], None]:
        def release() -> None:
            with self._current():
                free()
        return release

    def alloc(self, nbytes: int) -> tuple[int, Callable[[], None]]:
        with self._current():
            allocation = self.drv.mem_alloc(nbytes)
        return int(allocation), self._released(allocation.free)

    def alloc_pinned(self, nbytes: int) -> tuple[np.ndarray, Callable[[], None]]:
        with self._current():
            array = self.drv.pagelocked_empty(nbytes, np.uint8)
        return array, self._released(array.base.free)

    def stream(self) -> tuple[Any, int, Callable[[], None]]:
        with self._current():
            stream = self.drv.Stream()
        return stream, int(stream.handle), lambda: None  # pycuda destroys it with the object

    def event(self) -> tuple[Any, Callable[[], None]]:
        with self._current():
            return self.drv.Event(), lambda: None

    def to_device(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self._current():
            self.drv.memcpy_htod_async(dst, src, stream)

    def to_host(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self._current():
            self.drv.memcpy_dtoh_async(dst, src, stream)

    def on_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        with self._current():
            self.drv.memcpy_dtod_async(dst, src, nbytes, stream)

    def record(self, event: Any, stream: Any) -> None:
        with self._current():
            event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        with self._current():
            end.synchronize()
            return float(end.time_since(start))

    def synchronize(self, stream: Any) -> None:
        with self._current():
            stream.synchronize()


@functools.cache
def binding() -> Binding:
    """The process's CUDA binding: cuda-python where installed, else pycuda; MissingPackageError names what to install
    when neither is."""
    for load in (_cuda_python, _pycuda):
        with contextlib.suppress(ImportError):
            return load()
    raise MissingPackageError(NO_BINDING)


def _cuda_python() -> Binding:
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python before 12.6
    return CudaPython(runtime)


def _pycuda() -> Binding:
    import pycuda.driver

    return PyCuda(pycuda.driver)


def binding_reason() -> str | None:
    """Why no CUDA binding can be used here (the install hint), or None."""
    try:
        binding()
    except MissingPackageError as exc:
        return str(exc)
    return None


class DeviceBuffer:
    """`nbytes` of GPU memory (256-byte aligned, as cudaMalloc's are), freed by close() or when collected."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.pointer, release = binding().alloc(max(nbytes, 1))
        self._release = weakref.finalize(self, release)

    def address(self, offset: int = 0) -> int:
        """The device address `offset` bytes in, for TensorRT's set_tensor_address."""
        if not 0 <= offset <= self.nbytes:
            raise ValueError(f"offset {offset} outside a {self.nbytes}-byte buffer")
        return self.pointer + offset

    def close(self) -> None:
        self._release()


class PinnedBuffer:
    """`nbytes` of page-locked host memory seen as a flat uint8 array: copies to and from it run asynchronously."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.array, release = binding().alloc_pinned(max(nbytes, 1))
        self.array = self.array[:nbytes]
        self._release = weakref.finalize(self, release)

    def view(self, dtype: np.dtype | type, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """The bytes from `offset` on as an array of `dtype` and `shape` (no copy)."""
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not 0 <= offset <= offset + count <= self.nbytes:
            raise ValueError(f"{count} bytes at {offset} do not fit a {self.nbytes}-byte buffer")
        return self.array[offset:offset + count].view(dtype).reshape(shape)

    def close(self) -> None:
        self.array = np.empty(0, np.uint8)  # no view of freed memory is handed out after this
        self._release()


class Stream:
    """A CUDA stream: the copies enqueued here and the TensorRT launches given `handle` run in order."""

    def __init__(self) -> None:
        self._cuda = binding()
        self.native, self.handle, release = self._cuda.stream()
        self._release = weakref.finalize(self, release)

    def upload(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, dst_offset: int = 0,
               src_offset: int = 0) -> None:
        """Copy `nbytes` host → device, asynchronously."""
        self._cuda.to_device(dst.address(dst_offset), _span(src, src_offset, nbytes, dst, dst_offset), self.native)

    def download(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, dst_offset: int = 0,
                 src_offset: int = 0) -> None:
        """Copy `nbytes` device → host, asynchronously: read `dst` after synchronize()."""
        self._cuda.to_host(_span(dst, dst_offset, nbytes, src, src_offset), src.address(src_offset), self.native)

    def copy(self, dst: DeviceBuffer, src: DeviceBuffer, nbytes: int, dst_offset: int = 0,
             src_offset: int = 0) -> None:
        """Copy `nbytes` device → device, asynchronously."""
        _check_range(dst, dst_offset, nbytes)
        _check_range(src, src_offset, nbytes)
        self._cuda.on_device(dst.address(dst_offset), src.address(src_offset), nbytes, self.native)

    def synchronize(self) -> None:
        """Wait until everything enqueued on this stream has finished."""
        self._cuda.synchronize(self.native)

    def close(self) -> None:
        self._release()


class Event:
    """A CUDA timing event: recorded on a stream, it marks when the work enqueued before it has finished."""

    def __init__(self) -> None:
        self._cuda = binding()
        self.native, release = self._cuda.event()
        self._release = weakref.finalize(self, release)

    def record(self, stream: Stream) -> None:
        self._cuda.record(self.native, stream.native)

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds of stream time from this event to `end` (both recorded, `end` completed)."""
        return self._cuda.elapsed_ms(self.native, end.native)

    def close(self) -> None:
        self._release()


def _check_range(buffer: DeviceBuffer | PinnedBuffer, offset: int, nbytes: int) -> None:
    if not 0 <= offset <= offset + nbytes <= buffer.nbytes:
        raise ValueError(f"{nbytes} bytes at {offset} do not fit a {buffer.nbytes}-byte buffer")


def _span(host: PinnedBuffer, offset: int, nbytes: int, device: DeviceBuffer, device_offset: int) -> np.ndarray:
    """The host side of a copy, both sides' ranges checked."""
    _check_range(host, offset, nbytes)
    _check_range(device, device_offset, nbytes)
    return host.array[offset:offset + nbytes]
