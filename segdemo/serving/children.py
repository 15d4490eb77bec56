"""Child processes of the `--front-ends` supervisor: their output relayed, a restart delay, ports tried, and an end
that follows the supervisor's."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import sys
from dataclasses import dataclass

BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0  # restart delay, doubling while a child keeps dying young
STABLE_S = 60.0  # a child that ran this long died of something new: restart it after the first delay again
PR_SET_PDEATHSIG = 1


@dataclass
class Backoff:
    """How long to wait before restarting a child that exited, from how long it ran and how often it died young."""

    failures: int = 0

    def after(self, ran_s: float) -> float:
        self.failures = 0 if ran_s >= STABLE_S else self.failures
        delay = min(BACKOFF_FIRST_S * 2 ** self.failures, BACKOFF_MAX_S)
        self.failures += 1
        return delay


async def accepts(host: str, port: int) -> bool:
    """Whether `host`:`port` accepts a TCP connection now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def http_ok(host: str, port: int, path: str) -> bool:
    """Whether `GET path` on `host`:`port` answers 200 now (within 2 s)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), 2.0)
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()
    return status.split(b" ")[1:2] == [b"200"]


async def relay(stream: asyncio.StreamReader, prefix: str) -> None:
    """A child's output, line by line, into this process's stderr."""
    pending = b""
    while data := await stream.read(65536):
        *lines, pending = (pending + data).split(b"\n")
        sys.stderr.write("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines))
        sys.stderr.flush()
    if pending:
        sys.stderr.write(f"{prefix}{pending.decode(errors='replace')}\n")


async def exit_code(proc: asyncio.subprocess.Process, poll_s: float = 0.1) -> int:
    """The process's exit code once it exits — even while a child of its (a Python backend stub) still holds its
    output pipe, which `proc.wait()` waits for too (asyncio wakes wait() only once every pipe is closed)."""
    while proc.returncode is None:
        await asyncio.sleep(poll_s)
    return proc.returncode


def end_with_parent() -> None:
    """In a forked child before exec: SIGTERM when the process that started it dies, even by SIGKILL (Linux only)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
