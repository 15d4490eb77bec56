"""Triton: exported configs against Triton's own schema, and the triton backend against a real tritonserver (the
nvidia-pytriton wheel's) on loopback — pixel agreement, concurrency, a server that is down, dies and returns."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from segdemo import backends
from segdemo.cli import main
from segdemo.errors import SegdemoError
from segdemo.image.preprocess import ModelInput, prepare
from segdemo.profiling.spans import SpanRecorder

from .conftest import photo

MODEL = "random:tiny"
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install -r "
                                                       "requirements-dev.txt")


def _config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _params(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def _fake_plan(build, onnx_file, precision="fp16"):
    """A cached plan as `segdemo build --backend tensorrt` leaves it (only its sidecar is read by the export)."""
    engines = build / "engines"
    engines.mkdir(parents=True)
    (engines / "tiny-tensorrt-0123.plan").write_bytes(b"not a real plan")
    (engines / "tiny-tensorrt-0123.json").write_text(json.dumps({
        "backend": "tensorrt", "precision": precision, "tensorrt": "tensorrt 10.13.0", "built_at": "2026-01-01",
        "onnx": {"fused_fp32": onnx_file.name}, "built_on": {"gpu": "NVIDIA H100"}}))


def test_exported_configs_follow_tritons_schema(session_factory, build_dir, tmp_path, capsys):
    session = session_factory(MODEL, "fp32")
    assert main(["triton", "export", "--model", MODEL, "--out", str(tmp_path / "repo"), "--build-dir",
                 str(build_dir), "--max-batch", "4", "--instances", "2"]) == 0
    assert "tensorrt     skipped: no fp16 TensorRT plan" in capsys.readouterr().out
    build = tmp_path / "build"
    _fake_plan(build, session.onnx_file)
    from segdemo.triton.repository import export_repository

    export_repository(session.source, session.onnx_file, tmp_path / "repo", ("tensorrt",), build_dir=build)
    height, width = session.source.input_size
    configs = {variant: _config(tmp_path / "repo" / variant / "segformer" / "config.pbtxt")
               for variant in ("python", "onnxruntime", "tensorrt")}
    python, ort, trt = configs["python"], configs["onnxruntime"], configs["tensorrt"]
    assert (python.backend, ort.platform, trt.platform) == ("python", "onnxruntime_onnx", "tensorrt_plan")
    # The python variant batches requests (each keeps its own output size); the others run one per execution.
    assert python.max_batch_size == 4 and python.HasField("dynamic_batching")
    assert list(python.input[0].dims) == [height, width, 3] and list(python.output[0].dims) == [-1, -1]
    for config in (ort, trt):
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [1, height, width, 3] and list(config.output[0].dims) == [1, -1, -1]
    assert trt.input[1].is_shape_tensor and not ort.input[1].is_shape_tensor
    assert [g.count for c in configs.values() for g in c.instance_group] == [2, 2, 1]
    from tritonclient.grpc import model_config_pb2 as pb

    kinds = pb.ModelInstanceGroup.Kind
    assert [c.instance_group[0].kind for c in configs.values()] == [kinds.KIND_CPU, kinds.KIND_AUTO, kinds.KIND_GPU]
    assert _params(trt)["segdemo_precision"] == "fp16" and _params(ort)["segdemo_precision"] == "fp32"
    assert {_params(c)["segdemo_spec"] for c in configs.values()} == {MODEL}
    assert (tmp_path / "repo" / "tensorrt" / "segformer" / "1" / "model.plan").read_bytes() == b"not a real plan"
    assert (tmp_path / "repo" / "python" / "segformer" / "1" / "model.py").is_file()


def test_a_session_variant_of_a_model_building_backend_is_exported_without_the_graph(session_factory, tmp_path):
    """torch-cuda's engine tier reads no ONNX graph: its repository is written without one (no export on a fresh
    machine), and only the session variant can be."""
    from segdemo.triton.repository import export_repository, model_key

    source = session_factory(MODEL, "fp32").source
    (done,) = export_repository(source, None, tmp_path / "repo", ("session",), served=("torch-cuda", "fp16"))
    params = _params(_config(done.repository / "segformer" / "config.pbtxt"))
    assert params["segdemo_backend"] == "torch-cuda" and "segdemo_graph" not in params
    assert params["segdemo_model"] == model_key(source)
    with pytest.raises(ValueError, match="only the session variant"):
        export_repository(source, None, tmp_path / "other", ("session", "onnxruntime"))
    assert [b for b in ("onnxruntime", "tensorrt", "tensorrt-rtx", "torch-cuda", "triton://h:1/m")
            if backends.reads_graph(b)] == ["onnxruntime", "tensorrt", "tensorrt-rtx"]


def test_addresses_and_registry():
    from segdemo.backends.triton import Endpoint, parse_url

    assert parse_url("triton://gpu-1:9001/seg") == Endpoint("grpc", "gpu-1", 9001, "seg")
    assert parse_url("triton+http://gpu-1") == Endpoint("http", "gpu-1", 8000, "segformer")
    assert backends.kind("triton+grpc://h:1/m") == "triton" and backends.kind("onnxruntime") == "onnxruntime"
    assert backends.precision_for("triton://h:1/m") == "auto"
    with pytest.raises(SegdemoError, match="not a Triton address"):
        parse_url("triton:/nohost")
    with pytest.raises(SegdemoError, match="needs the server's address"):
        backends.create("triton", None, SpanRecorder())


@pytest.fixture(scope="module")
def repository(session_factory, tmp_path_factory):
    from segdemo.triton.repository import export_repository

    session = session_factory(MODEL, "fp32")
    out = tmp_path_factory.mktemp("triton")
    (done,) = export_repository(session.source, session.onnx_file, out, ("python",))
    return done.repository


def _server(repository, **ports):
    from segdemo.triton.server import TritonServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local tritonserver: {reason}")
    return TritonServer(repository, **ports)


@pytest.fixture(scope="module")
def server(repository):
    with _server(repository) as running:
        yield running


def _backend(session, url, **options):
    return backends.create(url, session.onnx_file, SpanRecorder(), backends.LoadContext(session.source), **options)


def _input(image, out_size) -> ModelInput:
    model_input = prepare(image, (512, 512))
    return ModelInput(model_input.pixels, out_size, model_input.original_size)


def test_sessions_agree_pixel_for_pixel_with_onnxruntime(session_factory, server, tmp_path):
    """The whole request through Triton (gRPC) equals the local fp32 backend's, on real photos of two sizes; the
    remote session, on an empty build folder, exports no graph (the server runs the model)."""
    from segdemo.pipeline import Session

    local = session_factory(MODEL, "fp32")
    with Session(MODEL, f"triton://{server.grpc_address}/segformer", build_dir=tmp_path) as remote:
        assert remote.onnx_file is None and not (tmp_path / "onnx").exists()
        assert remote.describe()["device"].startswith("triton python @ 127.0.0.1")
        for image in (photo("astronaut"), photo("coffee")):  # 512×512 and 400×600: two output sizes
            ours, theirs = local.segment(image), remote.segment(image)
            assert ours.class_map.shape == image.shape[:2]
            np.testing.assert_array_equal(theirs.class_map, ours.class_map)
            assert len(np.unique(ours.class_map)) > 5  # a real map, not a constant


def test_http_and_an_unusual_output_size(session_factory, server):
    local = session_factory(MODEL, "fp32").backend
    with _backend(session_factory(MODEL, "fp32"), f"triton+http://{server.http_address}/segformer") as remote:
        model_input = _input(photo("chelsea"), (1001, 333))
        np.testing.assert_array_equal(remote.run(model_input, SpanRecorder()),
                                      local.run(model_input, SpanRecorder()))


def test_concurrent_requests(session_factory, server):
    """Several threads share one backend (a client each); Triton queues and batches them, each keeps its size."""
    local = session_factory(MODEL, "fp32").backend
    sizes = [(200 + 37 * i, 640 - 41 * i) for i in range(6)]
    inputs = [_input(photo("astronaut"), size) for size in sizes]
    results: dict[int, np.ndarray] = {}
    with _backend(session_factory(MODEL, "fp32"), f"triton://{server.grpc_address}/segformer") as remote:
        def work(i: int) -> None:
            results[i] = remote.run(inputs[i], SpanRecorder())

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sizes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(results) == list(range(len(sizes)))
    for i, model_input in enumerate(inputs):
        np.testing.assert_array_equal(results[i], local.run(model_input, SpanRecorder()))


def test_a_different_model_or_name_is_refused(session_factory, server):
    session = session_factory(MODEL, "fp32")
    other = dataclasses.replace(session.source, spec="random:b5", content_hash="0" * 64)
    with pytest.raises(SegdemoError, match=r"serves random:tiny, not random:b5 — export this model"):
        backends.create(f"triton://{server.grpc_address}", session.onnx_file, SpanRecorder(),
                        backends.LoadContext(other))
    with pytest.raises(SegdemoError, match=r"has no ready model 'nosuch' \(it has segformer\)"):
        _backend(session, f"triton://{server.grpc_address}/nosuch")
    with pytest.raises(SegdemoError, match="runs fp32, not fp16"):
        _backend(session, f"triton://{server.grpc_address}/segformer", precision="fp16")


def test_a_front_end_served_by_the_engine_tier_says_so_on_its_engine_tab(server, build_dir):
    """A front end of --front-ends whose backend is the shared Triton server: its Engine tab names the tier (address
    and model), and its page refuses builds as every front end does."""
    from segdemo.web.config import BUILDS_SPLIT, AppConfig
    from segdemo.web.demo import Demo
    from segdemo.web.engine_page import engine_view

    url = f"triton://{server.grpc_address}/segformer"
    for index in (0, None):
        demo = Demo(AppConfig(model=MODEL, backend=url, build_dir=str(build_dir), front_end_index=index)).start()
        try:
            demo.wait(timeout=60)
            markdown = engine_view(demo).markdown
        finally:
            demo.wait().close()
            demo.visitors.close()
        said = (f"**Served by:** the engine tier shared by every front end of this app: {url}, model {MODEL} (python "
                f"variant); this front end holds no copy of the model")
        assert (said in markdown) == (index is not None) and f"**Server:** {url}" in markdown
    assert Demo(AppConfig(backend=url, front_end_index=0)).builds_refused == BUILDS_SPLIT


def test_server_down_at_start_is_one_sentence(session_factory):
    from segdemo.triton.server import free_port

    start = time.monotonic()
    with pytest.raises(SegdemoError) as caught:
        _backend(session_factory(MODEL, "fp32"), f"triton://127.0.0.1:{free_port()}/segformer")
    message = str(caught.value)
    assert message.startswith("the Triton server at 127.0.0.1:") and "did not answer at start" in message
    assert "segdemo triton serve" in message and "\n" not in message
    assert time.monotonic() - start < 10


def test_a_server_that_comes_up_late_is_waited_for_when_asked(session_factory, repository, monkeypatch):
    """SEGDEMO_TRITON_WAIT_S (set by --front-ends for its front ends): the load keeps trying while the server starts."""
    from concurrent.futures import ThreadPoolExecutor

    from segdemo.triton.server import free_port

    monkeypatch.setenv("SEGDEMO_TRITON_WAIT_S", "60")
    grpc_port = free_port()
    late = _server(repository, grpc_port=grpc_port)
    started = time.monotonic()
    # The server starts from this thread: its parent-death signal follows the thread that started it.
    with ThreadPoolExecutor(1) as pool:
        connecting = pool.submit(_backend, session_factory(MODEL, "fp32"), f"triton://127.0.0.1:{grpc_port}/segformer")
        try:
            time.sleep(1.0)
            assert not connecting.done()
            late.start()
            with connecting.result(timeout=60) as remote:
                assert remote.variant == "python" and time.monotonic() - started >= 1.0
        finally:
            late.close()


def test_server_dies_mid_run_and_serving_resumes_when_it_returns(session_factory, repository, build_dir):
    """A request while the server is gone fails with one sentence; the session keeps going and recovers."""
    from segdemo.pipeline import Session

    image = photo("coffee")
    expected = session_factory(MODEL, "fp32").segment(image).class_map
    first = _server(repository).start()
    try:
        with Session(MODEL, f"triton://{first.grpc_address}/segformer", build_dir=build_dir) as session:
            np.testing.assert_array_equal(session.segment(image).class_map, expected)
            # Killed while a large request runs: that request either finished or fails with the sentence.
            outcome: list[object] = []
            big = threading.Thread(target=lambda: outcome.append(_outcome(session, photo("astronaut", (2048, 2048)))))
            big.start()
            time.sleep(0.05)
            first.kill()
            big.join(60)
            assert outcome and (outcome[0] == "ok" or "did not answer this request" in str(outcome[0]))
            with pytest.raises(SegdemoError, match=r"^the Triton server at 127\.0\.0\.1:\d+ did not answer this "
                                                   r"request \(.*\) — check that it runs"):
                session.segment(image)
            second = _server(repository, http_port=first.http_port, grpc_port=first.grpc_port).start()
            try:
                np.testing.assert_array_equal(session.segment(image).class_map, expected)
            finally:
                second.close()
    finally:
        first.close()


def _outcome(session, image) -> object:
    try:
        session.segment(image)
        return "ok"
    except SegdemoError as exc:
        return exc


def test_an_output_size_over_the_bound_is_refused_and_the_next_request_works(session_factory, server):
    """A client asking the Python model for 3000×3000 (≈5 GB of logits) gets an error naming the bound; the next
    request is answered as usual."""
    local = session_factory(MODEL, "fp32").backend
    with _backend(session_factory(MODEL, "fp32"), f"triton://{server.grpc_address}/segformer") as remote:
        with pytest.raises(SegdemoError, match="each side 1 to 2048 pixels"):
            remote.run(_input(photo("coffee"), (3000, 3000)), SpanRecorder())
        model_input = _input(photo("coffee"), (2048, 700))
        np.testing.assert_array_equal(remote.run(model_input, SpanRecorder()), local.run(model_input, SpanRecorder()))


def test_the_python_models_bound_is_segdemos():
    import re
    from pathlib import Path

    import segdemo.triton
    from segdemo.image.preprocess import MAX_OUTPUT_SIDE

    text = (Path(segdemo.triton.__file__).parent / "python_model.py").read_text()
    assert int(re.search(r"^MAX_SIDE = (\d+)$", text, re.M).group(1)) == MAX_OUTPUT_SIDE
