"""The Gradio app as users and API clients see it: a real server on loopback, driven by gradio_client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from segdemo.visuals import read_class_map


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(build_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", "random:tiny", "--port", str(port), "--build-dir", str(build_dir)],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited early:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"app did not come up:\n{log.read_text()}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_segment_api(client, photo_file):
    from gradio_client import handle_file

    overlay, legend_html, classes_png, legend_json, status = client.predict(
        handle_file(str(photo_file)), 0.5, api_name="/segment"
    )
    assert Image.open(overlay).size == (600, 400)
    classes = read_class_map(classes_png)
    assert classes.shape == (400, 600) and classes.max() < 150
    legend = json.loads(open(legend_json).read())
    assert abs(sum(c["share"] for c in legend["classes"]) - 1.0) < 1e-9
    assert {c["id"] for c in legend["classes"]} == set(np.unique(classes).tolist())
    assert "onnxruntime" in status and "random weights" in status
    assert legend["classes"][0]["name"] in legend_html


def test_bad_upload_gives_clear_error_and_app_keeps_serving(client, tmp_path, photo_file):
    from gradio_client import handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(bad)), 0.5, api_name="/segment")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="empty"):
        client.predict(handle_file(str(empty)), 0.5, api_name="/segment")
    overlay, *_ = client.predict(handle_file(str(photo_file)), 0.5, api_name="/segment")
    assert Image.open(overlay).size == (600, 400)
