"""`python app.py --front-ends N`: N copies of the app on loopback ports of their own, behind one public port.

One Gradio process spends CPU on every request outside the engine (routing, upload, queue, event stream,
file download), so on a many-core machine one process caps the app long before the GPU does. This supervisor starts
the engine tier that holds the one copy of the model where one can run here (`engine_tier`), then N copies
(`--front-ends 1`, each with a session on that tier, else on a model of its own), serves the public address through
HAProxy (configured by `haproxy`, run by `haproxy_process`), relays their output as `[frontend k] …`, restarts a copy
that exits (with a backoff) and stops them all on SIGINT or SIGTERM. It builds no Demo and loads no model itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.triton import WAIT_ENV, is_url
from ..errors import SegdemoError
from ..web.examples import examples_cache_folder
from . import engine_tier
from .children import PR_SET_PDEATHSIG, Backoff, accepts, relay
from .haproxy import COOKIE, ProxyConfig, executable
from .haproxy_process import HAProxy

if TYPE_CHECKING:
    from ..web.demo import AppConfig

log = logging.getLogger("segdemo.serving.frontends")

MAX_FRONT_ENDS = 64
SUPERVISOR_ENV = "SEGDEMO_SUPERVISOR_PID"  # tells a front end whose death it must not outlive
SET_BY_SUPERVISOR = ("host", "port", "share", "front_ends", "public", "front_end_index")
POLL_S = 0.25  # how often a starting front end's port is tried
STOP_S = 10.0  # a front end's grace between SIGTERM and SIGKILL


def child_argv(config: AppConfig, script: str | Path, index: int, port: int) -> list[str]:
    """`python app.py` with the parent's options, as front end `index` on 127.0.0.1:`port`: public when the parent
    is (it serves visitors through the proxy), without a share link (the parent's points at the proxy)."""
    argv = [sys.executable, str(script)]
    for f in dataclasses.fields(config):  # AppConfig's fields are app.py's options, name for name
        value = getattr(config, f.name)
        if f.name in SET_BY_SUPERVISOR or value is None or value is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--front-ends", "1", "--front-end-index", str(index)]
    return argv + (["--public"] if config.is_public else [])


def child_env(temp_dir: str) -> dict[str, str]:
    """The parent's environment for a front end: one Gradio upload and cache folder for all (a visitor moved to
    another front end still reaches their files), no share link of its own, output unbuffered for the relay."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEGDEMO_SHARE", "GRADIO_SHARE")}
    return {**env, "GRADIO_TEMP_DIR": temp_dir, "PYTHONUNBUFFERED": "1", SUPERVISOR_ENV: str(os.getpid())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` different free loopback ports."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def bind_problem(host: str, port: int) -> str | None:
    """Why `host`:`port` cannot be served now (None: it can), tried before haproxy is started on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as haproxy binds it
            s.bind((host, port))
    except OSError as exc:
        return str(exc)
    return None


def exit_with_supervisor() -> None:
    """In a front end: end this process when its supervisor dies, even by SIGKILL (Linux; a no-op elsewhere)."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(parent):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """`sig` to a front end and anything it started (its own process group: e.g. torch.compile's workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class FrontEnd:
    """One copy of the app on its own loopback port (kept across restarts: it is in haproxy's configuration):
    started, relayed, watched and restarted until `stop`."""

    def __init__(self, index: int, port: int, config: AppConfig, script: str | Path, env: dict[str, str]) -> None:
        self.index, self.port = index, port
        self.config, self.script, self.env = config, script, env
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                how = await self._run_once(started)
            except OSError as exc:  # could not start it at all (e.g. out of processes): try again like a crash
                how = f"could not start ({exc})"
            if self._stop.is_set():
                return
            ran = time.monotonic() - started
            delay = backoff.after(ran)
            log.warning("front end %d %s after %.0f s; restarting it in %.0f s", self.index, how, ran, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self, started: float) -> str:
        """Start the front end and serve until it exits or `stop`; says how it ended."""
        proc = await asyncio.create_subprocess_exec(
            *child_argv(self.config, self.script, self.index, self.port), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
            start_new_session=True)  # the terminal's Ctrl-C reaches the supervisor only, which stops them in order
        log.info("front end %d started: pid %d, port %d", self.index, proc.pid, self.port)
        assert proc.stdout is not None  # stdout=PIPE
        relayed = asyncio.create_task(relay(proc.stdout, f"[frontend {self.index}] "))
        watch = asyncio.create_task(self._watch(started))
        exited, stopping = asyncio.create_task(proc.wait()), asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        stopping.cancel()
        if not exited.done():
            await self._terminate(proc, exited)
        _signal_group(proc, signal.SIGKILL)  # whatever the front end left running in its process group
        await relayed
        return f"(pid {proc.pid}) exited with code {proc.returncode}"

    async def _watch(self, started: float) -> None:
        """Log when the front end's port first accepts connections (haproxy's health checks decide where visitors
        go)."""
        while not await accepts("127.0.0.1", self.port):
            await asyncio.sleep(POLL_S)
        log.info("front end %d ready on 127.0.0.1:%d after %.1f s", self.index, self.port, time.monotonic() - started)

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process, exited: asyncio.Task) -> None:
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_S)
        except asyncio.TimeoutError:
            log.warning("front end pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, STOP_S)
            _signal_group(proc, signal.SIGKILL)
            await exited


def share_link(host: str, port: int) -> str:
    """A gradio.live link to the proxy's port, made as Blocks.launch(share=True) makes one (needs internet)."""
    import secrets
    from urllib.parse import urlparse, urlunparse

    from gradio import networking

    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = networking.setup_tunnel(local, port, secrets.token_urlsafe(32), None, None)
    return urlunparse(("https", *urlparse(url)[1:]))


async def _share(host: str, port: int) -> None:
    try:
        url = await asyncio.get_running_loop().run_in_executor(None, share_link, host, port)
    except Exception as exc:  # noqa: BLE001 — the app keeps serving locally, as Gradio's own launch does
        log.error("could not create the share link (%s) — check this machine's internet connection; the app keeps "
                  "serving on port %d", exc, port)
        return
    print(f"* Running on public URL: {url}", flush=True)


async def supervise(config: AppConfig, script: str | Path) -> int:
    """Serve config.host:config.port through haproxy to config.front_ends copies of the app, and to their shared
    engine tier where one can run here (`engine_tier`), until a signal."""
    try:
        binary = executable()
    except SegdemoError as exc:
        log.error("%s", exc)
        return 1
    if problem := bind_problem(config.host, config.port):
        log.error("cannot serve %s:%d (%s) — choose another --port or stop what uses it", config.host, config.port,
                  problem)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    made_temp = not os.environ.get("GRADIO_TEMP_DIR")
    temp = tempfile.mkdtemp(prefix="segdemo-gradio-") if made_temp else os.environ["GRADIO_TEMP_DIR"]
    ports = free_ports(config.front_ends + 1)  # the last: the engine tier's gRPC port
    tier = engine_tier.plan(config, ports[-1])
    engine = engine_tier.EngineTier(config, ports[-1], tier.max_batch) if tier.local else None
    proxy = HAProxy(ProxyConfig(config.host, config.port, tuple(ports[:-1])), binary)
    try:
        return await _serve(Fleet(config, script, temp, ports[:-1], tier, engine), proxy, stop)
    finally:
        proxy.close()
        if engine is not None:
            engine.close()
        if made_temp:
            shutil.rmtree(temp, ignore_errors=True)


@dataclasses.dataclass
class Fleet:
    """What the supervisor starts behind haproxy: the front ends (on `ports`) and their engine tier, if local."""

    config: AppConfig
    script: str | Path
    temp: str
    ports: list[int]
    tier: engine_tier.TierChoice
    engine: engine_tier.EngineTier | None
    runs: list[asyncio.Task] = dataclasses.field(default_factory=list)
    fronts: list[FrontEnd] = dataclasses.field(default_factory=list)
    halt: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """The engine tier (if local) until it is ready, then the front ends; with no engine tier after all, each
        front end loads its own model (one log sentence says why)."""
        tier = self.tier
        if self.engine is not None:
            try:
                await self._start_engine(self.engine)
            except (engine_tier.EngineFailed, OSError) as exc:
                self.engine.stop()
                self.engine = None
                tier = engine_tier.TierChoice(self.config.backend, False, f"no shared engine tier: {exc} — each "
                                                                          f"front end loads its own copy of the model")
        (log.info if tier.local or is_url(tier.backend) else log.warning)("%s", tier.note)
        if self.halt.is_set():
            return
        config = engine_tier.front_end_config(self.config, tier)
        env = child_env(self.temp)
        if is_url(config.backend):  # its load waits while the engine tier (re)starts
            env[WAIT_ENV] = str(engine_tier.WAIT_S)
        if tier.local:  # one examples cache for this set-up, whichever port the tier got this time
            cfg = self.config
            folder = examples_cache_folder(Path(cfg.build_dir) if cfg.build_dir else None, cfg.model, "engine-tier",
                                           engine_tier.VARIANT, cfg.display_side)
            env.setdefault("GRADIO_EXAMPLES_CACHE", str(folder))
        self.fronts = [FrontEnd(i, port, config, self.script, env) for i, port in enumerate(self.ports)]
        self.runs += [asyncio.create_task(f.run()) for f in self.fronts]

    async def _start_engine(self, engine: engine_tier.EngineTier) -> None:
        repository = await engine.export()
        running = asyncio.create_task(engine.run(repository))
        self.runs.append(running)
        ready, halted = asyncio.create_task(engine.ready.wait()), asyncio.create_task(self.halt.wait())
        await asyncio.wait({running, ready, halted}, timeout=engine_tier.READY_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        halted.cancel()
        if running.done() and (failed := running.exception()) is not None:
            self.runs.remove(running)
            raise failed
        if not engine.ready.is_set() and not self.halt.is_set():
            engine.stop()
            raise engine_tier.EngineFailed(f"tritonserver was not ready within {engine_tier.READY_S:.0f} s")

    def stop(self) -> None:
        self.halt.set()
        if self.engine is not None:
            self.engine.stop()
        for front in self.fronts:
            front.stop()


async def _serve(fleet: Fleet, proxy: HAProxy, stop: asyncio.Event) -> int:
    """haproxy, then the engine tier and the front ends, until `stop` or haproxy fails; the exit code."""
    config = fleet.config
    try:
        await proxy.check()
    except SegdemoError as exc:
        log.error("%s", exc)
        return 1
    serving = asyncio.create_task(proxy.run())
    served, stopping = asyncio.create_task(proxy.served.wait()), asyncio.create_task(stop.wait())
    await asyncio.wait({serving, served, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if served.done() and not stopping.done():
        print(f"* Running on local URL:  http://{config.host}:{config.port}", flush=True)
        log.info("serving %d front ends through haproxy (sticky cookie %s); Gradio files in %s", len(fleet.ports),
                 COOKIE, fleet.temp)
        if config.share and not os.environ.get("SPACE_ID"):  # Gradio makes no share link on a Space either
            fleet.runs.append(asyncio.create_task(_share(config.host, config.port)))
        fleet.runs.append(asyncio.create_task(fleet.start()))  # the engine tier, then the front ends
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    served.cancel()
    stopping.cancel()
    log.info("stopping haproxy, %d front ends%s", len(fleet.ports), " and the engine tier" if fleet.engine else "")
    proxy.stop()
    fleet.stop()
    while pending := [task for task in fleet.runs if not task.done()]:  # starting may add tasks as it ends
        await asyncio.gather(*pending, return_exceptions=True)
    try:
        await serving
    except SegdemoError as exc:
        log.error("%s — the app stops", exc)
        return 1
    return 0


def serve(config: AppConfig, script: str | Path) -> int:
    """`python app.py --front-ends N` (N > 1): this process supervises; returns the exit code."""
    return asyncio.run(supervise(config, script))
