"""`segdemo bench --load`: the session and the floor under concurrent clients (the app's runs start `python app.py`,
as tests/test_frontends.py does); answers are checked per image, wrong ones counted, client processes for servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from segdemo.bench.load import SIDES, _drive, _runs, client_processes


def test_wrong_answers_are_counted_and_failures_reported():
    expected = [np.full(side, i % 3, np.uint8) for i, side in enumerate(SIDES)]

    def call(index: int) -> np.ndarray:
        if index == 2:
            raise RuntimeError("engine fault")
        return expected[index] if index != 3 else expected[4]  # image 3 gets another image's answer

    def check(index: int, answer: np.ndarray) -> str | None:
        return None if np.array_equal(answer, expected[index]) else f"image {index}: not its answer"

    run = _drive(len(SIDES), 1, call, check)  # client c asks for image c once
    assert run["answered"] == len(SIDES) - 1 and run["failures"] == 1
    assert run["failure_examples"] == ["RuntimeError: engine fault"]
    assert run["wrong_answers"] == 1 and run["wrong_examples"] == ["image 3: not its answer"]


def test_runs_and_client_processes():
    assert _runs("session", 8, 4) == [(1, 1), (8, 1)]
    assert _runs("app", 8, 4) == [(1, 1), (8, 1), (8, 4)]
    assert _runs("front-ends", 8, 4) == [(8, 4)] and _runs("floor", 8, 4) == [(1, 1)] == _runs("engine", 8, 4)
    assert client_processes(32, 3) == 3 and client_processes(2, 8) == 2
    assert 1 <= client_processes(32) <= max(1, (os.cpu_count() or 1) // 2)


def test_load_smoke_run_of_the_session_and_the_floor(tmp_path, build_dir):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--load", "--load-targets", "session,floor", "--model",
         "random:tiny", "--backend", "onnxruntime", "--build-dir", str(build_dir), "--clients", "1,3", "--requests",
         "2", "--max-batch", "2", "--warmup", "1", "--client-processes", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((out / "load.json").read_text())["runs"]
    assert set(runs) == {f"{label}, {n} clients" for label in ("session, max batch 1", "session, max batch 2", "floor")
                         for n in (1, 3)}
    for name, run in runs.items():
        clients = 1 if name.endswith(", 1 clients") else 3
        assert run["clients"] == clients and run["answered"] == 2 * clients, run
        assert run["failures"] == 0 and run["wrong_answers"] == 0, run
    assert runs["floor, 3 clients"]["client_processes"] == 2 and runs["floor, 1 clients"]["client_processes"] == 1
    assert "| session, max batch 2, 3 clients |" in result.stdout


def test_load_run_of_an_engine_tier_alone(tmp_path, build_dir, session_factory):
    """`--load-targets engine --backend triton://…`: tritonclient clients in their own processes against a real
    tritonserver serving the session variant; every answer is checked against its own image's."""
    import pytest

    from segdemo.triton.server import TritonServer, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    models = tmp_path / "models"
    export = subprocess.run([sys.executable, "-m", "segdemo", "triton", "export", "--model", "random:tiny", "--out",
                             str(models), "--variants", "session", "--backend", "onnxruntime", "--max-batch", "4",
                             "--build-dir", str(build_dir)], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    out = tmp_path / "out"
    with TritonServer(models / "session", log_file=tmp_path / "tritonserver.log") as server:
        result = subprocess.run(
            [sys.executable, "-m", "segdemo", "bench", "--load", "--load-targets", "engine", "--model", "random:tiny",
             "--backend", f"triton://{server.grpc_address}/segformer", "--clients", "4", "--requests", "3",
             "--warmup", "1", "--client-processes", "2", "--out", str(out)],
            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "load.json").read_text())["runs"]["engine"]
    assert run["answered"] == 12 and run["failures"] == 0 and run["wrong_answers"] == 0, run
    assert run["client_processes"] == 2 and "| engine |" in result.stdout and run["client_cpu_ms"] > 0
    # Triton's own account of the run: every timed request (and the warm-ups) passed through the model's execute.
    server = run["server"]
    assert server["requests"] >= 12 and sum(b["executions"] for b in server["batch_sizes"].values()) == \
        server["executions"] and 1 <= server["mean_batch"] <= 4, server
    assert 0 < server["per_request"]["compute_infer_ms"] <= server["per_request"]["success_ms"], server
    assert "in the server, ms a request" in result.stdout
    assert f"| {server['mean_batch']} | {run['client_cpu_ms']} |" in result.stdout  # the table's engine row
    # Every answer left the stub without a traceback (its DLPack capsules are handed over by DLPack's own name).
    assert "Traceback" not in (tmp_path / "tritonserver.log").read_text(errors="replace")
