"""The TensorRT path without PyTorch: a fresh virtual environment holding requirements-tensorrt.txt and segdemo
(--no-deps) — no torch, transformers or onnxruntime — runs the command line and the app against a build folder
prepared here with the full install, and gets as far as the machine allows: the ladder's reason where TensorRT cannot
run, never an import error.

Slow: the environment comes from the package index (pip's cache makes a second run quick: about 1 to 2 minutes in
all, of which about 40 s the install). Where the index cannot be reached the test skips, except in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from .conftest import app_process, photo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-tensorrt.txt"
FULL_ONLY = ("torch", "transformers", "onnxruntime")  # what the full install has and the TensorRT path must not need
UNREACHABLE = ("Could not find a version", "No matching distribution", "NewConnectionError", "Failed to establish",
               "Temporary failure in name resolution", "Network is unreachable", "ProxyError")
RTX = "tensorrt-rtx"


def _env() -> dict[str, str]:
    """The environment of a command in the slim venv: nothing points back into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "GRADIO_ANALYTICS_ENABLED": "False", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          timeout=1200, env=_env())
    if done.returncode == 0:
        return
    if any(marker in done.stderr for marker in UNREACHABLE) and os.environ.get("CI") != "true":
        pytest.skip(f"the package index cannot be reached: {done.stderr.strip().splitlines()[-1]}")
    pytest.fail(f"pip install {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    """The python of a fresh venv with requirements-tensorrt.txt and the segdemo wheel (built here, no deps)."""
    tmp = tmp_path_factory.mktemp("slim")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    python = tmp / "venv" / "bin" / "python"
    _pip(python, "-r", str(REQUIREMENTS))
    src = tmp / "src"  # a copy, so the checkout stays free of build output
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "segdemo", src / "segdemo", ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    _pip(python, "--no-deps", str(next((tmp / "dist").glob("segdemo-*.whl"))))
    return python


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A build folder prepared with the full install: random:tiny's fused graph and its TensorRT-RTX plan."""
    pytest.importorskip("tensorrt_rtx", reason="preparing the folder builds a TensorRT-RTX plan")
    folder = tmp_path_factory.mktemp("prepared") / "deploy"
    done = subprocess.run([sys.executable, "-m", "segdemo", "build", "--model", "random:tiny", "--backend", RTX,
                           "--precision", "fp32", "--build-dir", str(folder)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.fixture()
def work(tmp_path) -> Path:
    """A working folder outside the checkout with a photo in it."""
    Image.fromarray(photo("coffee", (120, 160))).save(tmp_path / "photo.jpg", quality=92)
    return tmp_path


def run(slim: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(slim), *args], capture_output=True, text=True, timeout=600, cwd=work, env=_env())


def no_import_error(result: subprocess.CompletedProcess) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "ModuleNotFoundError" not in text and "ImportError" not in text, text


def test_the_environment_is_slim_and_runs_the_installed_segdemo(slim, work):
    code = ("import importlib.util, segdemo; print(segdemo.__file__); "
            f"print([m for m in {FULL_ONLY!r} if importlib.util.find_spec(m) is not None])")
    lines = run(slim, work, "-c", code).stdout.split("\n")
    assert Path(lines[0]).is_relative_to(slim.parent.parent), lines[0]
    assert lines[1] == "[]", f"the TensorRT environment holds {lines[1]}"


def test_doctor_reports_the_ladder(slim, work):
    from segdemo.gpu import detect

    result = run(slim, work, "-m", "segdemo", "doctor")
    no_import_error(result)
    rung = next(line for line in result.stdout.splitlines() if line.strip(" →").startswith(f"{RTX} "))
    assert "torch" not in rung, f"the TensorRT rung depends on torch: {rung}"
    if detect() is None:
        assert "skipped  no CUDA GPU" in rung, rung
    assert "not run: it exports random:tiny" in result.stdout and "onnxruntime are not installed" in result.stdout


def test_segment_gets_as_far_as_the_machine_allows(slim, work, prepared):
    result = run(slim, work, "-m", "segdemo", "segment", "photo.jpg", "--backend", RTX, "--model", str(prepared),
                 "--no-show", "--out", "out")
    no_import_error(result)
    if result.returncode == 0:  # a GPU TensorRT-RTX runs on
        assert (work / "out" / "classes.png").is_file() and (work / "out" / "legend.json").is_file()
    else:
        assert f"backend '{RTX}' is not usable here: " in result.stderr, result.stderr
        assert "torch" not in result.stderr


def test_the_prepared_plan_is_found_without_torch(slim, work, prepared):
    """The plan's key is worked out from the prepared graphs alone (no export, no ONNX Runtime): a cache hit."""
    result = run(slim, work, "-m", "segdemo", "build", "--backend", RTX, "--model", str(prepared),
                 "--precision", "fp32")
    no_import_error(result)
    assert result.returncode == 0, result.stderr
    assert "cache    hit" in result.stdout, result.stdout


def test_the_app_answers_with_the_ladders_reason(slim, work, prepared):
    from gradio_client import Client, handle_file

    shutil.copy2(ROOT / "app.py", work / "app.py")
    with app_process(work / "build", work / "app.log", "--model", str(prepared), "--backend", RTX,
                     env={"PYTHONPATH": ""}, python=str(slim), script=str(work / "app.py")) as (_, url):
        client = Client(url, verbose=False)
        try:
            _, _, legend, _ = client.predict(handle_file(str(work / "photo.jpg")), 0.5, False, api_name="/segment")
        except Exception as exc:  # noqa: BLE001 — the app's answer where TensorRT-RTX cannot run
            assert f"backend '{RTX}' is not usable here: " in str(exc) and "torch" not in str(exc), str(exc)
        else:
            assert legend["classes"], legend
    log = (work / "app.log").read_text()
    assert "No module named" not in log and "ModuleNotFoundError" not in log, log
