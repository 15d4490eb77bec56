"""The app's options and the public rule: anything but a plain local run is public (front ends, share links, a
non-loopback bind, a Space, --public); the limits a visitor meets come from the options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segdemo.media.live import FrameSize
from segdemo.serving.frontends import child_argv
from segdemo.web.config import BUILDS_SPLIT, AppConfig


def _children_options(config: AppConfig) -> list[str]:
    return child_argv(config, "app.py", 1, 5555)[2:]


def test_front_ends_get_the_parents_options_and_are_public():
    config = AppConfig(model="random:b0", backend="onnxruntime", host="0.0.0.0", port=80, share=True, front_ends=3,
                       max_batch=4, allow_build=True)
    argv = _children_options(config)
    assert argv[:4] == ["--model", "random:b0", "--backend", "onnxruntime"]
    assert "--allow-build" in argv and argv[argv.index("--max-batch") + 1] == "4"
    assert "--share" not in argv and argv[-9:] == ["--host", "127.0.0.1", "--port", "5555", "--front-ends", "1",
                                                   "--front-end-index", "1", "--public"]
    assert "--public" in _children_options(AppConfig(front_ends=2))  # behind the proxy, every copy is public


def test_only_a_plain_local_run_is_private():
    assert not AppConfig().is_public and AppConfig().builds_allowed
    for public in (AppConfig(public=True), AppConfig(host="0.0.0.0"), AppConfig(share=True), AppConfig(front_ends=2),
                   AppConfig(front_end_index=0)):
        assert public.is_public and not public.builds_allowed
    assert AppConfig(front_end_index=0).builds_refused == BUILDS_SPLIT
    assert AppConfig(public=True).live_time_limit == AppConfig().live_seconds
    assert AppConfig(public=True, allow_build=True).builds_allowed
    assert AppConfig.from_env({"SEGDEMO_PUBLIC": "1"}).is_public
    assert AppConfig.from_env({"SEGDEMO_FRONT_ENDS": "4"}).front_ends == 4


def test_a_space_is_public(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/segdemo")
    assert AppConfig().is_public and not AppConfig().builds_allowed


def test_visitor_limits_come_from_the_options():
    config = AppConfig.from_env({"SEGDEMO_IMAGE_MB": "8", "SEGDEMO_IMAGE_MP": "24", "SEGDEMO_SESSION_MINUTES": "5",
                                 "SEGDEMO_MAX_SESSIONS": "50", "SEGDEMO_VIDEO_MB": "100"})
    assert (config.image_limits.bytes, config.image_limits.pixels) == (8 * 2**20, 24_000_000)
    assert (config.session_seconds, config.max_sessions) == (300, 50)
    assert config.upload_mb == 100  # Gradio's one upload limit: the larger kind's
    assert 8 * 2**20 * 4 // 3 < config.body_bytes < 12 * 2**20  # an 8 MB image inline as base64, not much more


def test_the_live_frame_size_is_an_option():
    """--live-size / SEGDEMO_LIVE_SIZE: asked of the browser's camera, passed on to front ends; refused if unusable."""
    assert AppConfig().live_size == FrameSize(640, 480)
    config = AppConfig.from_env({"SEGDEMO_LIVE_SIZE": "320x240"})
    assert config.live_size == FrameSize(320, 240)
    assert config.webcam_constraints == {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}
    argv = _children_options(config)
    assert argv[argv.index("--live-size") + 1] == "320x240"
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        AppConfig.from_env({"SEGDEMO_LIVE_SIZE": "large"})
    app = Path(__file__).resolve().parent.parent / "app.py"
    refused = subprocess.run([sys.executable, str(app), "--live-size", "32x32"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "argument --live-size" in refused.stderr


def test_the_mcp_server_is_an_option_front_ends_inherit():
    assert not AppConfig.from_env({}).mcp
    assert AppConfig.from_env({"SEGDEMO_MCP": "1"}).mcp
    assert AppConfig.from_env({"GRADIO_MCP_SERVER": "True"}).mcp  # Gradio's own switch, read by the app
    assert not AppConfig.from_env({"SEGDEMO_MCP": "0", "GRADIO_MCP_SERVER": "True"}).mcp  # the app's own wins
    assert "--mcp" in _children_options(AppConfig(mcp=True, front_ends=2))
    assert "--mcp" not in _children_options(AppConfig(front_ends=2))
