"""The Gradio app as users and API clients see it: a real server on loopback, driven by gradio_client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.image.visuals import read_class_map

from .conftest import photo


def test_segment_api_returns_documented_values(client, photo_file):
    from gradio_client import handle_file

    overlay, classes_png, legend, timings = client.predict(
        handle_file(str(photo_file)), 0.5, False, api_name="/segment"
    )
    assert Image.open(overlay).size == (600, 400) and Image.open(overlay).format == "JPEG"
    classes = read_class_map(classes_png)
    assert classes.shape == (400, 600) and classes.max() < 150
    assert abs(sum(c["share"] for c in legend["classes"]) - 1.0) < 1e-9
    assert {c["id"] for c in legend["classes"]} == set(np.unique(classes).tolist())
    for entry in legend["classes"]:
        assert entry["pixels"] == int((classes == entry["id"]).sum())
    assert legend["random_weights"] is True and legend["image_size"] == [400, 600]
    assert timings["backend"] == "onnxruntime" and timings["infer_ms"] > 0
    assert {"decode", "resize", "execute", "legend", "encode overlay", "encode classes.png"} <= set(timings["spans_ms"])


def test_large_photo_is_shown_at_display_size_and_downloads_stay_full_size(client, tmp_path):
    """A portrait phone photo (EXIF orientation 6): shown at ≤ 1600 px, class map exact and upright at full size."""
    from gradio_client import handle_file

    from segdemo.image.decode import decode

    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait: every phone photo held upright
    Image.fromarray(photo("chelsea", (1500, 2400))).save(path, quality=90, exif=exif.tobytes())
    overlay, classes_png, legend, _ = client.predict(handle_file(str(path)), 0.5, False, api_name="/segment")
    assert Image.open(overlay).size == (1000, 1600)  # (width, height): upright, long side 1600
    classes = read_class_map(classes_png)
    assert classes.shape == (2400, 1500) == decode(path).shape[:2]
    assert legend["image_size"] == [2400, 1500] and legend["display_size"] == [1600, 1000]
    for entry in legend["classes"]:
        assert entry["pixels"] == int((classes == entry["id"]).sum())
    # The full-size overlay is made on demand, from this client's last result.
    full = client.predict(0.5, api_name="/full_overlay")
    assert Image.open(full).size == (1500, 2400) and Image.open(full).format == "PNG"


def test_api_is_documented(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/segment", "/full_overlay", "/segment_video"]
    assert [p["label"] for p in api["named_endpoints"]["/segment"]["returns"]][0] == "Overlay"


def test_bad_upload_gives_clear_error_and_app_keeps_serving(client, tmp_path, photo_file):
    from gradio_client import handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(bad)), 0.5, False, api_name="/segment")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="empty"):
        client.predict(handle_file(str(empty)), 0.5, False, api_name="/segment")
    overlay, *_ = client.predict(handle_file(str(photo_file)), 0.5, False, api_name="/segment")
    assert Image.open(overlay).size == (600, 400)


def test_full_overlay_before_any_result_is_a_clear_error(app_url):
    from gradio_client import Client

    with pytest.raises(Exception, match="segment an image first"):
        Client(app_url, verbose=False).predict(0.5, api_name="/full_overlay")


def test_one_front_end_is_gradio_itself(app_url):
    """The default, --front-ends 1: no proxy in front, so no affinity cookie (tests/test_frontends.py has several)."""
    import urllib.request

    from segdemo.serving.haproxy import COOKIE

    with urllib.request.urlopen(app_url + "config", timeout=30) as answer:
        assert COOKIE not in str(answer.headers.get_all("Set-Cookie")) and json.loads(answer.read())["version"]


def test_detailed_request_has_layer_spans(client, photo_file):
    from gradio_client import handle_file

    *_, timings = client.predict(handle_file(str(photo_file)), 0.3, True, api_name="/segment")
    layer_names = set(timings["spans_ms"]) - {"request", "decode", "resize", "execute", "restore size", "legend",
                                             "display pictures", "encode overlay", "encode classes.png",
                                             "create profiling session"}
    assert any("LayerNormalization" in name for name in layer_names)


def test_config_from_environment():
    from segdemo.web.demo import AppConfig

    config = AppConfig.from_env({"SEGDEMO_MODEL": "random:b0", "SEGDEMO_PORT": "9000", "SEGDEMO_SHARE": "1",
                                 "SEGDEMO_BACKEND": "onnxruntime"})
    assert (config.model, config.port, config.share, config.backend) == ("random:b0", 9000, True, "onnxruntime")
    assert AppConfig.from_env({}).host == "127.0.0.1"
    video = AppConfig.from_env({"SEGDEMO_LIVE_SECONDS": "30", "SEGDEMO_VIDEO_SECONDS": "10", "SEGDEMO_VIDEO_MB": "50"})
    assert (video.live_seconds, video.video_limits.seconds, video.video_limits.bytes) == (30, 10.0, 50 * 2**20)
    assert video.live_time_limit is None  # loopback: the operator streams as long as they like
    assert AppConfig(live_seconds=30, share=True).live_time_limit == 30
    assert AppConfig(live_seconds=0, host="0.0.0.0").live_time_limit is None


def test_video_api_returns_playable_mp4_and_shares(client, tmp_path):
    av = pytest.importorskip("av")
    from gradio_client import handle_file

    from segdemo.bench.clips import make_clip

    clip = make_clip(tmp_path / "clip.mp4", 160, 120, 0.6, fps=10)
    video, status, _plot, shares_csv, shares_json, trace = client.predict(handle_file(str(clip)), 0.5,
                                                                         api_name="/segment_video")
    path = video["video"] if isinstance(video, dict) else video
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 6
    assert "6 frames" in status and "real time" in status
    assert len(Path(shares_csv).read_text().splitlines()) == 7
    assert json.loads(Path(shares_json).read_text())["frames"] == 6 and Path(trace).stat().st_size > 0


def test_bad_video_gives_one_sentence_and_app_keeps_serving(client, tmp_path, photo_file):
    from gradio_client import handle_file

    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(Exception, match="'holiday.mp4' is not a video file FFmpeg can read"):
        client.predict(handle_file(str(bad)), 0.5, api_name="/segment_video")
    overlay, *_ = client.predict(handle_file(str(photo_file)), 0.5, False, api_name="/segment")
    assert Image.open(overlay).size == (600, 400)


def test_an_image_over_the_upload_limit_is_refused(tmp_path):
    from segdemo.errors import SegdemoError
    from segdemo.web.admission import IMAGE_MB
    from segdemo.web.demo import AppConfig, Demo

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(IMAGE_MB * 2**20 + 10))
    with pytest.raises(SegdemoError, match=f"images are limited to {IMAGE_MB} MB"):
        Demo(AppConfig()).segment(str(big))


@pytest.mark.slow
def test_offline_default_model_falls_back_to_random_weights_with_banner(monkeypatch, tmp_path):
    from segdemo.model.source import DEFAULT_MODEL
    from segdemo.web.demo import AppConfig, Demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    demo = Demo(AppConfig(model=DEFAULT_MODEL, build_dir=str(tmp_path / "build"))).start()
    session = demo.wait(timeout=600)
    assert session.source.spec == "random:b4" and session.random_weights
    assert "Random weights" in demo.status_text() and "--model" in demo.status_text()
    result = demo.segment(np.zeros((64, 48, 3), np.uint8))
    assert result.info["random_weights"] and "random weights" in result.info["notice"]
    assert json.loads(json.dumps(result.legend_json()))["random_weights"] is True


@pytest.fixture(scope="module")
def public_app(build_dir, tmp_path_factory):
    """The app as a Space runs it (SPACE_ID set: public), still bound to loopback for the test."""
    from .conftest import running_app

    with running_app(build_dir, tmp_path_factory.mktemp("public") / "app.log", env={"SPACE_ID": "test/segdemo"}) as url:
        yield url


def test_a_public_app_refuses_engine_builds(public_app):
    from gradio_client import Client

    client = Client(public_app, verbose=False)
    with pytest.raises(Exception, match="engine builds are turned off on this public app.*--allow-build"):
        client.predict("fp16", api_name="/build_engine")
    overlay, *_ = client.predict(_photo_file(), 0.5, False, api_name="/segment")  # visitors still segment
    assert Image.open(overlay).size == (160, 120)


def _live_stream(url):
    import urllib.request

    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    (stream,) = [d for d in config["dependencies"] if any(t[1] == "stream" for t in d["targets"])]
    return stream


def test_a_public_app_limits_each_visitors_live_stream(public_app, app_url):
    from segdemo.web.config import LIVE_SECONDS
    from segdemo.web.demo import LIVE_FPS

    public, loopback = _live_stream(public_app), _live_stream(app_url)
    assert public["time_limit"] == LIVE_SECONDS and loopback["time_limit"] is None
    assert public["stream_every"] == pytest.approx(1 / LIVE_FPS)


@pytest.mark.slow
def test_allow_build_lets_a_public_app_build(build_dir, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx")
    from gradio_client import Client

    from segdemo.web.engine_page import NO_BUILDS

    from .conftest import running_app, tensorrt_runs_here

    log = tmp_path_factory.mktemp("public-allowed") / "app.log"
    with running_app(build_dir, log, "--allow-build", env={"SPACE_ID": "test/segdemo"}) as url:
        client = Client(url, verbose=False)
        client.predict(_photo_file(), 0.5, False, api_name="/segment")  # waits for the session to be ready
        message, engine, _ = client.predict("fp32", api_name="/build_engine")
    assert message.startswith("Built `random-tiny-fp32")
    # The page offers builds only where a TensorRT flavour runs; elsewhere the API still builds a plan for such GPUs.
    assert ("allowed (public app started with" in engine) if tensorrt_runs_here() else (NO_BUILDS in engine)


def _photo_file():
    import tempfile

    from gradio_client import handle_file

    path = Path(tempfile.mkdtemp()) / "small.jpg"
    Image.fromarray(photo("coffee", (120, 160))).save(path, quality=90)
    return handle_file(str(path))
