"""The engine tier of `--front-ends N`: one tritonserver that owns the model, shared by every front end.

Without it every front end loads, exports and warms up its own copy of the model. With it the supervisor exports a
Triton model repository once (`segdemo triton export --variants session`, in a child process, so the supervisor never
loads the model), runs the nvidia-pytriton wheel's tritonserver on it as one more child (relayed as `[engine] …`,
restarted with a backoff on the same ports), and the front ends get `--backend triton://127.0.0.1:<gRPC port>/<model>`.
The tier's model is segdemo's own session on the operator's backend (serving.engine_model): torch-cuda on a GPU, ONNX
Runtime on a CPU, loaded and compiled once, running the requests Triton's dynamic batcher queues from every front end
as one batch. NVIDIA's Triton container serves the exported TensorRT plan instead, reached with
`--backend triton://HOST:8001/…`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.triton import is_url
from ..errors import SegdemoError
from ..triton.repository import DEFAULT_NAME
from ..triton.server import backend_folder, free_port, kill_group, launch, unavailable_reason
from .children import Backoff, end_with_parent, exit_code, http_ok, relay

if TYPE_CHECKING:
    from ..web.config import AppConfig

log = logging.getLogger("segdemo.serving.frontends")

VARIANT = "session"  # the repository variant the tier serves: segdemo's session in tritonserver's Python backend
MAX_BATCH = 8  # requests one execute runs as a batch at least on a CPU (--max-batch raises it)
MAX_BATCH_GPU = 16  # on a GPU: where the batched network's throughput levels off (docs/benchmarks.md)
SHARED = "the front ends share one engine tier"  # how the log says that the tier serves them (benches look for it)
READY_S = 300.0  # the first start's bound: the model's load in tritonserver, not the export before it
POLL_S = 0.2  # how often a starting tritonserver's readiness is asked
STOP_S = 10.0  # tritonserver's grace between SIGTERM and SIGKILL (it drains in-flight requests first)
WAIT_S = 120  # how long a front end's load waits for the tier (SEGDEMO_TRITON_WAIT_S): it may be restarting


class EngineFailed(SegdemoError):
    """The engine tier could not be made or started: its export or its first tritonserver failed."""


@dataclass(frozen=True)
class TierChoice:
    """What serves the front ends: `backend` is their --backend; `local`: this supervisor runs the engine tier, whose
    batches hold up to `max_batch` requests."""

    backend: str
    local: bool
    note: str  # one sentence for the log: what serves the front ends, or why each loads its own model
    max_batch: int = 1


def choose(config: AppConfig, grpc_port: int, server_problem: str | None, has_gpu: bool) -> TierChoice:
    """The engine tier for `config`'s front ends, given why no local tritonserver can run (None: one can) and
    whether this machine has an NVIDIA GPU."""
    backend = config.backend
    if is_url(backend):
        return TierChoice(backend, False, f"the front ends are served by the engine tier at {backend} (started "
                                          f"elsewhere: none is started here)")
    if server_problem:
        return TierChoice(backend, False, f"no shared engine tier: {server_problem} — each front end loads its own "
                                          f"copy of the model; to share one, point them at a Triton server: "
                                          f"--backend triton://HOST:8001/segformer (docs/serving.md)")
    batch = max(MAX_BATCH_GPU if has_gpu else MAX_BATCH, config.max_batch)
    url = f"triton://127.0.0.1:{grpc_port}/{DEFAULT_NAME}"
    return TierChoice(url, True, f"{SHARED}: tritonserver at {url} ({config.model} on "
                                 f"--backend {backend} --precision {config.precision} in one process, "
                                 f"{'on the GPU' if has_gpu else 'on the CPU'}, batches of up to {batch})", batch)


def plan(config: AppConfig, grpc_port: int) -> TierChoice:
    """`choose` on this machine (nvidia-smi tells of a GPU: torch is not imported into the supervisor)."""
    if is_url(config.backend):
        return choose(config, grpc_port, None, False)
    return choose(config, grpc_port, unavailable_reason(), shutil.which("nvidia-smi") is not None)


def front_end_config(config: AppConfig, tier: TierChoice) -> AppConfig:
    """The options each front end runs with: the tier's backend; batching is Triton's, so none in the front end."""
    from dataclasses import replace

    if not is_url(tier.backend):
        return config
    return replace(config, backend=tier.backend, max_batch=1, precision="auto" if tier.local else config.precision)


class EngineTier:
    """tritonserver on a repository exported for `config`'s model, on fixed loopback ports, restarted until `stop`."""

    def __init__(self, config: AppConfig, grpc_port: int, max_batch: int = MAX_BATCH) -> None:
        self.config, self.grpc_port, self.http_port, self.max_batch = config, grpc_port, free_port(), max_batch
        self.folder = Path(tempfile.mkdtemp(prefix="segdemo-engine-"))  # mkdtemp: this user's only
        self.ready = asyncio.Event()  # set while tritonserver reports ready; cleared when it exits
        self.pid: int | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def export_argv(self) -> list[str]:
        """`python -m segdemo triton export` of the session variant into this tier's folder."""
        cfg = self.config
        argv = [sys.executable, "-m", "segdemo", "triton", "export", "--model", cfg.model, "--out",
                str(self.folder / "models"), "--variants", VARIANT, "--max-batch", str(self.max_batch),
                "--backend", cfg.backend, "--precision", cfg.precision]
        return argv + (["--build-dir", str(cfg.build_dir)] if cfg.build_dir else [])

    async def export(self) -> Path:
        """Export the repository (EngineFailed if the export fails, or `stop` comes first); its folder."""
        package_root = str(Path(__file__).resolve().parents[2])  # `-m segdemo` from any working folder
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *self.export_argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=end_with_parent)  # noqa: PLW1509 — the supervisor forks from its one event-loop thread
        assert proc.stdout is not None  # stdout=PIPE
        relayed = asyncio.create_task(relay(proc.stdout, "[engine] "))
        exited, stopping = asyncio.create_task(proc.wait()), asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await exited
        await relayed
        if proc.returncode != 0:
            raise EngineFailed(f"the engine tier's model export exited with code {proc.returncode} (its message is "
                               f"above)")
        log.info("engine tier's model repository exported in %.1f s", time.monotonic() - started)
        return self.folder / "models" / VARIANT

    async def run(self, repository: Path) -> None:
        """Serve until `stop`, restarting tritonserver whenever it exits; EngineFailed if the first one exits before
        it was ever ready."""
        backend_folder(self.folder / "backends")
        backoff, was_ready = Backoff(), False
        while not self._stop.is_set():
            started = time.monotonic()
            code = await self._run_once(repository)
            was_ready = was_ready or self.ready.is_set()
            self.ready.clear()
            if self._stop.is_set():
                return
            if not was_ready:
                raise EngineFailed(f"tritonserver exited with code {code} before its model was ready (its message "
                                   f"is above)")
            ran = time.monotonic() - started
            delay = backoff.after(ran)
            log.warning("engine tier (tritonserver pid %s) exited with code %s after %.0f s; restarting it in %.0f s",
                        self.pid, code, ran, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self, repository: Path) -> int | None:
        command, env = launch(repository, self.folder / "backends", "127.0.0.1", self.http_port, self.grpc_port)
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor only, which stops it in order
            preexec_fn=end_with_parent)  # noqa: PLW1509 — the supervisor forks from its one event-loop thread
        self.pid = proc.pid
        log.info("engine tier started: pid %d, gRPC 127.0.0.1:%d, HTTP 127.0.0.1:%d", proc.pid, self.grpc_port,
                 self.http_port)
        assert proc.stdout is not None  # stdout=PIPE
        relayed = asyncio.create_task(relay(proc.stdout, "[engine] "))
        watch = asyncio.create_task(self._watch(time.monotonic()))
        # Not proc.wait(): a stub left alive by a killed tritonserver holds the pipe until kill_group below.
        exited, stopping = asyncio.create_task(exit_code(proc)), asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        stopping.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), STOP_S)
        kill_group(proc.pid)  # its Python backend stubs, and the shared memory a crash leaves behind
        await exited
        await relayed
        return proc.returncode

    async def _watch(self, started: float) -> None:
        while not await http_ok("127.0.0.1", self.http_port, "/v2/health/ready"):
            await asyncio.sleep(POLL_S)
        self.ready.set()
        log.info("engine tier ready on gRPC 127.0.0.1:%d after %.1f s", self.grpc_port, time.monotonic() - started)
