"""HAProxy as a child of the `--front-ends` supervisor: its configuration written to a private folder and checked,
then `haproxy -f cfg -db` run in the foreground, relayed as `[haproxy] …`, restarted if it dies, stopped on request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ..errors import SegdemoError
from .children import Backoff, accepts, end_with_parent, relay
from .haproxy import ProxyConfig, render

log = logging.getLogger("segdemo.serving.frontends")

STOP_S = 5.0  # haproxy's grace between SIGTERM (its hard stop: connections closed) and SIGKILL
POLL_S = 0.1  # how often the public port is tried until haproxy serves it


class ProxyFailed(SegdemoError):
    """HAProxy refused its configuration, or exited before it ever served the public port."""


def local_address(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class HAProxy:
    """One haproxy process for `cfg`, kept running until `stop`."""

    def __init__(self, cfg: ProxyConfig, binary: str) -> None:
        self.cfg, self.binary = cfg, binary
        self.folder = Path(tempfile.mkdtemp(prefix="segdemo-haproxy-"))  # mkdtemp: this user's only
        self.path = self.folder / "haproxy.cfg"
        self.path.write_text(render(cfg))
        self.served = asyncio.Event()  # set once the public port accepted a connection through haproxy
        self.pid: int | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    async def check(self) -> None:
        """`haproxy -c`: ProxyFailed, with haproxy's own message, if it refuses the configuration."""
        proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", "-q", "-f", str(self.path), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise ProxyFailed(f"haproxy refused the configuration {self.path}: {out.decode(errors='replace').strip()}")

    async def run(self) -> None:
        """Serve until `stop`, restarting haproxy whenever it exits; ProxyFailed if it exits before it ever served."""
        backoff = Backoff()
        while not self._stop.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stop.is_set():
                return
            if not self.served.is_set():
                raise ProxyFailed(f"haproxy exited with code {code} before serving {self.cfg.host}:{self.cfg.port} "
                                  f"(its message is above)")
            ran = time.monotonic() - started
            delay = backoff.after(ran)
            log.warning("haproxy (pid %s) exited with code %s after %.0f s; restarting it in %.0f s", self.pid, code,
                        ran, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            self.binary, "-f", str(self.path), "-db", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor only, which stops it in order
            preexec_fn=end_with_parent)  # noqa: PLW1509 — the supervisor forks from its one event-loop thread
        self.pid = proc.pid
        log.info("haproxy started: pid %d, configuration %s", proc.pid, self.path)
        assert proc.stdout is not None  # stdout=PIPE
        relayed = asyncio.create_task(relay(proc.stdout, "[haproxy] "))
        watch = asyncio.create_task(self._watch())
        exited, stopping = asyncio.create_task(proc.wait()), asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        stopping.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), STOP_S)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await exited
        await relayed
        return proc.returncode

    async def _watch(self) -> None:
        host = local_address(self.cfg.host)
        while not await accepts(host, self.cfg.port):
            await asyncio.sleep(POLL_S)
        self.served.set()
