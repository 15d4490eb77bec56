"""A local tritonserver from the nvidia-pytriton wheel, for `segdemo triton serve` and the tests.

The wheel bundles tritonserver with the Python backend but leaves choosing the Python backend stub to pytriton; we
use the binary alone (pytriton's own Python code pins numpy<2, so the wheel is installed with --no-deps). The stub for
this interpreter's Python version goes into a private backend folder, never into the installed wheel.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import SegdemoError

log = logging.getLogger(__name__)

PACKAGE = "nvidia-pytriton==0.7.0"
INSTALL = f"pip install --no-deps {PACKAGE}"
PATH_ENV = "SEGDEMO_TRITON_PYTHONPATH"  # the models put these folders on sys.path (python_model.py: the same name)


def wheel_root() -> Path:
    """The installed wheel's `pytriton/tritonserver` folder (found without importing pytriton, which needs numpy<2)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SegdemoError(f"no tritonserver here: the nvidia-pytriton wheel bundles one — {INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise SegdemoError(f"the nvidia-pytriton wheel at {root.parent} has no tritonserver binary — reinstall: "
                           f"{INSTALL} --force-reinstall")
    return root


def unavailable_reason() -> str | None:
    """None if a local tritonserver with the Python backend can start here, else why not."""
    try:
        root = wheel_root()
    except SegdemoError as exc:
        return str(exc)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not (root / "python_backend_stubs" / version / "triton_python_backend_stub").is_file():
        return f"the nvidia-pytriton wheel has no Python backend stub for Python {version}"
    if ctypes.util.find_library(f"python{version}") is None:
        return (f"the Python backend stub needs the system's libpython{version}.so.1.0 — "
                f"apt-get install libpython{version}")
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on `repository`, listening on `host` only; `start` waits until every model is ready."""

    def __init__(self, repository: Path, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, log_file: Path | None = None) -> None:
        self.repository = Path(repository)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    def start(self, timeout: float = 120.0) -> TritonServer:
        reason = unavailable_reason()
        if reason:
            raise SegdemoError(reason)
        if not self.repository.is_dir():
            raise SegdemoError(f"no model repository at {self.repository} — make one with segdemo triton export")
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="segdemo-triton-"))
            backend_folder(self._scratch / "backends")
        log_file = self.log_file or self._scratch / "tritonserver.log"
        command, env = launch(self.repository, self._scratch / "backends", self.host, self.http_port, self.grpc_port)
        with open(log_file, "ab") as fh:
            # Its own session: Ctrl-C in a terminal reaches us, and we stop it in order. The parent-death signal
            # ends it if we die without stopping it (a killed test run must not leave servers behind).
            self.process = process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                      start_new_session=True, preexec_fn=end_with_parent)
        self._wait_ready(process, timeout, log_file)
        log.info("tritonserver ready: gRPC %s, HTTP %s (log %s)", self.grpc_address, self.http_address, log_file)
        return self

    def _wait_ready(self, process: subprocess.Popen, timeout: float, log_file: Path) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_address}/v2/health/ready"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SegdemoError(f"tritonserver exited with code {process.returncode} while starting — "
                                   f"see {log_file}:\n{_tail(log_file)}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        self.stop()
        raise SegdemoError(f"tritonserver was not ready within {timeout:.0f} s — see {log_file}:\n{_tail(log_file)}")

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would, Python backend stubs included."""
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process.pid)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after `timeout` s); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:  # its stubs live in the same process group
            kill_group(self.process.pid)

    def close(self) -> None:
        """Stop and remove the private backend folder."""
        self.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch(repository: Path, backends: Path, host: str, http_port: int, grpc_port: int) -> tuple[list[str], dict]:
    """The wheel's tritonserver command on `repository` (backends from `backend_folder`) and its environment."""
    root = wheel_root()
    command = [
        str(root / "bin" / "tritonserver"), "--model-repository", str(repository), "--backend-directory", str(backends),
        "--http-address", host, "--http-port", str(http_port), "--grpc-address", host, "--grpc-port", str(grpc_port),
        "--allow-metrics", "false", "--exit-on-error", "true", "--exit-timeout-secs", "5",
    ]
    env = {**os.environ, "LD_LIBRARY_PATH": _joined(root.parent.parent / "nvidia_pytriton.libs",
                                                    os.environ.get("LD_LIBRARY_PATH")),
           PATH_ENV: os.pathsep.join(_package_folders())}
    return command, env


def _package_folders() -> list[str]:
    """What the stub's Python needs on its path: segdemo's folder (the session variant imports it) and this
    environment's package folders, PYTHONPATH's included."""
    root = str(Path(__file__).resolve().parents[2])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isdir(p)]
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return list(dict.fromkeys([root, *extra, *sites]))


def backend_folder(backends: Path) -> None:
    """backends/python with the wheel's Python backend and the stub of this interpreter's Python version."""
    root = wheel_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = backends / "python"
    python.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    # Copied, not linked: the backend and the stub find the wheel's libraries through LD_LIBRARY_PATH.
    shutil.copy2(root / "python_backend_stubs" / version / "triton_python_backend_stub", python)


def kill_group(group: int) -> None:
    """SIGKILL to a tritonserver's process group (its Python backend stubs included), and the shared memory that a
    crash leaves behind removed."""
    regions = _shm_regions(group)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    for region in regions:
        with contextlib.suppress(OSError):
            (Path("/dev/shm") / region).unlink()


def _shm_regions(group: int) -> list[str]:
    """Shared-memory regions of the Python backend stubs in process group `group` (named on their command lines)."""
    regions = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(proc.name)) == group:
                args = (proc / "cmdline").read_bytes().split(b"\0")
                regions += [a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region_")]
    return regions


def end_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _joined(first: Path, rest: str | None) -> str:
    return f"{first}{os.pathsep}{rest}" if rest else str(first)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
