"""Spaces hosting: `@spaces.GPU` paths with the real `spaces` package off ZeroGPU, the ZeroGPU start-up order, and
the module-level `demo` that `gradio app.py` (reload mode) and Spaces import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import photo

ROOT = Path(__file__).resolve().parent.parent


def test_spaces_gpu_is_a_no_op_off_zero_gpu(monkeypatch):
    pytest.importorskip("spaces", reason="the spaces package is in requirements.txt")
    from segdemo.web.hosting import gpu_function, on_zero_gpu

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not on_zero_gpu()

    def double(x):
        return 2 * x

    wrapped = gpu_function(double, seconds=5)
    assert wrapped(21) == 42 and not hasattr(wrapped, "zerogpu")  # spaces marks functions it sends to a worker


def test_on_zero_gpu_the_session_loads_on_the_first_request(monkeypatch, build_dir):
    from segdemo.web.demo import AppConfig, Demo

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    demo = Demo(AppConfig(model="random:tiny", backend="onnxruntime", build_dir=str(build_dir))).start()
    assert not demo.ready and demo.session is None and "ZeroGPU" in demo.status_text()
    result = demo.segment(photo("coffee", (120, 160)))  # what the spaces.GPU worker runs
    assert demo.ready and result.class_map.shape == (120, 160)
    assert np.array_equal(demo.segment(photo("coffee", (120, 160))).class_map, result.class_map)


def test_app_module_exposes_demo_blocks_for_gradio_reload_and_spaces(build_dir):
    """Imported (not run), app.py builds its Blocks from SEGDEMO_* variables, even with several front ends asked for
    (only `python app.py` supervises), and never reads the importer's command line."""
    code = ("import sys; sys.argv = ['gradio', 'app.py', '--not-an-app-option']; import app, gradio; "
            "print(type(app.demo).__name__, isinstance(app.demo, gradio.Blocks), app.config.model, "
            "app.config.front_ends)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False",
                               "SEGDEMO_FRONT_ENDS": "2", "SEGDEMO_MODEL": "random:tiny",
                               "SEGDEMO_BACKEND": "onnxruntime", "SEGDEMO_BUILD_DIR": str(build_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-4:] == ["Blocks", "True", "random:tiny", "2"]
