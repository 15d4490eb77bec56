"""Shared fixtures: real models with random weights, real ONNX Runtime sessions, real photos."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.serving.frontends import free_port

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def session_factory(build_dir):
    from segdemo.pipeline import Session

    cache: dict[tuple[str, str], Session] = {}

    def get(spec: str, precision: str = "auto"):
        """The CPU backend's session of `spec`: at "auto" what the app and the CLI run by default (int8 where its
        guard passes), or at "fp32" for comparisons with other fp32 pipelines."""
        if (spec, precision) not in cache:
            cache[spec, precision] = Session(spec, "onnxruntime", precision, build_dir=build_dir)
        return cache[spec, precision]

    yield get
    for session in cache.values():
        session.close()


@pytest.fixture(scope="session")
def reference_factory(session_factory):
    from segdemo.model.reference import TransformersPipeline

    cache = {}

    def get(spec: str):
        if spec not in cache:
            cache[spec] = TransformersPipeline(session_factory(spec, "fp32").source)
        return cache[spec]

    return get


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real photograph shipped with scikit-image, optionally resized to (height, width)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if size is not None:
        mode = "L" if image.ndim == 2 else "RGB"
        image = np.asarray(Image.fromarray(image, mode).resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return image


def corrupt_keeping_size(path) -> None:
    """Zero 64 bytes in the middle of a cached artifact: same size, so only its checksum can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.fixture()
def photo_file(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo("coffee")).save(path, quality=92)
    return path


def tensorrt_runs_here() -> bool:
    """Whether a TensorRT flavour can run on this machine: the Engine tab then offers builds."""
    from segdemo import backends
    from segdemo.web.engine_page import TENSORRT_FLAVOURS

    return any(rung.available for rung in backends.ladder() if rung.name in TENSORRT_FLAVOURS)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def app_process(build_dir, log, *args: str, env: dict[str, str] | None = None, python: str = sys.executable,
                script: str = "app.py"):
    """`python app.py --model random:tiny` on a free loopback port (plus `args`, a later --model overriding); yields
    (process, URL) once the page answers. `python` and `script`: another environment's interpreter and app.py copy."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [python, script, "--model", "random:tiny", "--port", str(port), "--build-dir", str(build_dir),
             *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"app exited early:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"app did not come up:\n{log.read_text()}")
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def running_app(build_dir, log, *args: str, env: dict[str, str] | None = None):
    """`python app.py --model random:tiny` on a free loopback port (plus `args`); yields its URL."""
    with app_process(build_dir, log, *args, env=env) as (_, url):
        yield url


@pytest.fixture(scope="session")
def app_url(build_dir, tmp_path_factory):
    with running_app(build_dir, tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


