"""The decoder child: FFmpeg probes and decodes one job's video in a process of its own, so a crash, a hang or a
runaway allocation in a demuxer or decoder costs that job, never the server. `DecoderProcess` is the server's end;
`python -m segdemo.media.video_child` the child's, streaming the probe's answer, then raw RGB frames over a pipe — or,
asked for packets (a GPU decoder in the server), the stream's compressed packets: the container is still parsed here,
only the codec's bitstream is decoded by NVDEC in the server."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import traceback
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from .video_decode import decode, packets, read_info, sends_packets
from .video_limits import BadVideoError, VideoInfo, VideoLimits

HEADER = struct.Struct("<cQ")  # message kind, payload bytes
INFO, FRAME, PACKET, ERROR, DONE = b"I", b"F", b"P", b"E", b"D"
MODES = ("probe", "decode", "packets")  # packets: for streams that `sends_packets`, frames for the others
PIPE_BYTES = 2**20  # the pipe's capacity asked for (Linux's default most-unprivileged): fewer wake-ups per frame
MAX_NOTE = 2**16  # the most a message other than a frame may carry: a confused child cannot make the server allocate
ROOT = str(Path(__file__).resolve().parents[2])  # where this segdemo is imported from: the child imports the same


class DecoderProcess:
    """The server's end of one decoder child: what the probe found (`info`), then its frames; killed on close."""

    def __init__(self, path: Path, limits: VideoLimits, mode: str = "decode") -> None:
        if mode not in MODES:
            raise ValueError(f"a decoder child's mode is one of {', '.join(MODES)}, not {mode!r}")
        self.path, self.limits, self.mode, self.name = path, limits, mode, f"'{path.name}'"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MB of address space per thread arena, which RLIMIT_AS counts
        argv = [sys.executable, "-m", "segdemo.media.video_child", str(path), limits.to_json(), mode,
                str(os.getpid())]
        # Its own session: a Ctrl-C in the terminal reaches the server, which then kills the child, not both at once.
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                                        start_new_session=True)
        weakref.finalize(self, _kill, self.process)  # an abandoned job's child goes with it
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)  # reads wait in select(), with the stall limit as its timeout
        _grow_pipe(self.fd)
        try:
            self.info = self._info()
        except BaseException:
            self.close()
            raise
        self.sends_packets = mode == "packets" and sends_packets(self.info)  # else frames follow (mode decode)

    def __enter__(self) -> DecoderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def frames(self) -> Iterator[np.ndarray]:
        """Upright RGB frames as the child decodes them; BadVideoError with the child's sentence, or when it dies."""
        shape = (self.info.height, self.info.width, 3)
        while True:
            frame = np.empty(shape, np.uint8)
            kind, note = self._message(frame)
            if kind == FRAME:
                yield frame
            elif kind == DONE:
                return
            else:
                self._unexpected(kind, note)

    def packets(self) -> Iterator[bytes]:
        """The stream's packets as the child demuxes them (`sends_packets`); BadVideoError as `frames` raises it."""
        largest = self.info.width * self.info.height * 3  # no compressed frame is larger than its raw pixels
        while True:
            kind, note = self._message(None, largest)
            if kind == PACKET:
                yield note
            elif kind == DONE:
                return
            else:
                self._unexpected(kind, note)

    def kill(self) -> None:
        """Stop the child now (from any thread): a reader waiting on it sees the pipe end."""
        _kill(self.process)

    def close(self) -> None:
        self.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _info(self) -> VideoInfo:
        kind, note = self._message(None)
        if kind != INFO:
            self._unexpected(kind, note)
        return VideoInfo.from_json(note.decode())

    def _unexpected(self, kind: bytes, note: bytes) -> NoReturn:
        if kind == ERROR:
            raise BadVideoError(note.decode())
        self.kill()
        raise BadVideoError(f"the video decoder sent something unexpected while reading {self.name}")

    def _message(self, frame: np.ndarray | None, largest: int = MAX_NOTE) -> tuple[bytes, bytes]:
        header = bytearray(HEADER.size)
        self._fill(memoryview(header))
        kind, size = HEADER.unpack(header)
        if kind == FRAME:
            if frame is None or size != frame.nbytes:
                self._unexpected(b"?", b"")
            self._fill(frame.data.cast("B"))
            return kind, b""
        if size > (largest if kind == PACKET else MAX_NOTE):
            self._unexpected(b"?", b"")
        note = bytearray(size)
        self._fill(memoryview(note))
        return kind, bytes(note)

    def _fill(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                n = os.readv(self.fd, [view[got:]])
            except BlockingIOError:
                if not select.select([self.fd], [], [], self.limits.stall)[0]:
                    self.kill()
                    raise BadVideoError(f"the video decoder stopped responding on {self.name} for "
                                        f"{self.limits.stall:g} s and was stopped") from None
                continue
            if n == 0:
                self._died()
            got += n

    def _died(self) -> NoReturn:
        try:
            code = self.process.wait(timeout=self.limits.stall)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        what = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        raise BadVideoError(f"the video decoder crashed on {self.name} ({what}), so the file is damaged or not a "
                            f"video FFmpeg can read safely")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass  # it ended between the poll and the signal


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or a lower system maximum: the default pipe works, with more wake-ups


# The child's side.


def main(argv: list[str]) -> int:
    """`python -m segdemo.media.video_child PATH LIMITS_JSON probe|decode|packets PARENT_PID`: probe, then frames
    (decode), or packets where the stream `sends_packets` (packets)."""
    path, limits, mode, parent = Path(argv[0]), VideoLimits.from_json(argv[1]), argv[2], int(argv[3])
    out = os.fdopen(os.dup(1), "wb", buffering=PIPE_BYTES)
    os.dup2(2, 1)  # a stray print or a C library's write goes to stderr, never into the frame stream
    _confine(limits.memory, parent)
    try:
        _run(out, path, limits, mode)
    except BrokenPipeError:
        pass  # the server stopped reading: the job ended or was abandoned
    return 0


def _run(out: BinaryIO, path: Path, limits: VideoLimits, mode: str) -> None:
    """Probe, then every frame or packet; whatever goes wrong reaches the server as one sentence."""
    name = f"'{path.name}'"
    try:
        info = read_info(path, limits)
        _send(out, INFO, info.to_json().encode())
        count = 0
        if mode == "packets" and sends_packets(info):
            for data in packets(path, info, limits):
                _send(out, PACKET, data, flush=False)
                count += 1
        elif mode != "probe":
            for rgb in decode(path, info, limits):
                _send(out, FRAME, np.ascontiguousarray(rgb).data.cast("B"), flush=False)
                count += 1
        if mode != "probe":
            _send(out, DONE, str(count).encode())
    except BadVideoError as exc:
        _send(out, ERROR, str(exc).encode())
    except MemoryError:
        _send(out, ERROR, f"{name} needs more than {limits.memory / 2**20:.0f} MB of memory to decode, the most a "
                          f"video may use".encode())
    except Exception as exc:  # noqa: BLE001 — the server gets one sentence, the log the traceback
        traceback.print_exc()
        _send(out, ERROR, f"decoding {name} failed ({type(exc).__name__})".encode())


def _send(out: BinaryIO, kind: bytes, payload: bytes | memoryview, flush: bool = True) -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    if flush:
        out.flush()


def _confine(memory: int, parent: int) -> None:
    """A memory cap, no core files of visitors' videos, and death with the server (Linux)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        import ctypes

        # PR_SET_PDEATHSIG: SIGKILL when the thread that started this child ends, so never an orphan decoding on.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe's end (EPIPE) still stops it at its next frame
    if os.getppid() != parent:
        os._exit(0)  # the server died before the line above


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # no teardown: nothing is left to flush, and a closed pipe must not print a BrokenPipeError
