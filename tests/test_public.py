"""The app as a hostile visitor meets it: the real app on loopback, driven by gradio_client and raw HTTP. After each
abuse a normal request still works."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from .conftest import app_process, photo

RSS_PER_VISITOR_MB = 40  # what a visitor who sent the largest image may leave behind once the request is done


@pytest.fixture(scope="module")
def app(build_dir, tmp_path_factory):
    """The app for the module: (process, URL, log file)."""
    log = tmp_path_factory.mktemp("public") / "app.log"
    with app_process(build_dir, log, "--backend", "onnxruntime") as (proc, url):
        yield proc, url, log


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.jpg"
    Image.fromarray(photo("coffee", (120, 160))).save(path, quality=90)
    return path


def _client(url, **options):
    from gradio_client import Client

    return Client(url, verbose=False, **options)


def _works(url, small) -> None:
    """A normal request, as any visitor sends it, is answered."""
    from gradio_client import handle_file

    overlay, *_ = _client(url).predict(handle_file(str(small)), 0.5, False, api_name="/segment")
    assert Image.open(overlay).size == (160, 120)


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def _dependency(url: str, name: str) -> int:
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == name)


def _join(url: str, fn: int, data: list, session_hash: str | None = None, headers: dict | None = None):
    """One event through Gradio's queue as a browser sends it: (HTTP status, the completion message or body)."""
    import httpx

    session_hash = session_hash or uuid.uuid4().hex[:11]
    with httpx.Client(base_url=url, timeout=120, headers=headers or {}) as http:
        joined = http.post("gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": session_hash,
                                                          "event_data": None, "trigger_id": None})
        if joined.status_code != 200:
            return joined.status_code, joined.json()
        with http.stream("GET", f"gradio_api/queue/data?session_hash={session_hash}") as events:
            for line in events.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                    return 200, json.loads(line[5:])
    raise AssertionError("the event never completed")


def test_a_visitor_who_sent_a_huge_flat_image_leaves_no_memory_behind(app, small, tmp_path):
    """64 MP PNGs of one colour (a 190 KB file each) from new visitors, who then leave: the server keeps none of
    their pixels (the first request warms up whatever a process keeps once)."""
    from gradio_client import handle_file

    proc, url, _ = app
    flat = tmp_path / "flat.png"
    Image.new("RGB", (8000, 8000), (120, 130, 140)).save(flat, compress_level=9)
    visits = 3

    def visit() -> None:
        client = _client(url)
        overlay, classes, legend, _ = client.predict(handle_file(str(flat)), 0.5, False, api_name="/segment")
        assert legend["image_size"] == [8000, 8000] and Image.open(overlay).size == (1600, 1600)

    visit()
    before = _rss_mb(proc.pid)
    for _ in range(visits):
        visit()
    grown = (_rss_mb(proc.pid) - before) / visits
    print(f"server RSS {before:.0f} MB after the first visit, {grown:+.1f} MB per later visitor")  # for the record
    assert grown <= RSS_PER_VISITOR_MB, f"the server grew {grown:.0f} MB per visitor"
    _works(url, small)


def test_an_image_as_a_data_url_has_the_same_limits(app, small):
    """Inline images sent straight to the queue, not through /upload: over the body limit refused before Gradio reads
    it, over the image limit refused before decoding; both in one sentence."""
    _, url, _ = app
    segment = _dependency(url, "segment")

    def inline(size: int) -> dict:
        encoded = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(size - 8)).decode()
        return {"path": None, "url": "data:image/png;base64," + encoded, "meta": {"_type": "gradio.FileData"}}

    status, answer = _join(url, segment, [inline(30 * 2**20), 0.5, False, None])
    assert status == 413 and "larger than this app accepts" in answer["detail"]
    status, answer = _join(url, segment, [inline(25 * 2**20 + 2**19), 0.5, False, None])
    assert status == 200 and not answer["success"] and "images are limited to 25 MB" in answer["output"]["error"]
    buffer = io.BytesIO()
    Image.fromarray(photo("coffee", (120, 160))).save(buffer, format="PNG")
    fine = {"path": None, "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
            "meta": {"_type": "gradio.FileData"}}
    status, answer = _join(url, segment, [fine, 0.5, False, None])
    assert status == 200 and answer["success"] and answer["output"]["data"][2]["image_size"] == [120, 160]
    _works(url, small)


def test_formats_outside_the_allowlist_are_never_opened(app, small, tmp_path):
    """An EPS file (Pillow's reader would run Ghostscript) and an oversized upload: one sentence each."""
    from gradio_client import handle_file

    _, url, _ = app
    eps = tmp_path / "drawing.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n%%EOF\n")
    with pytest.raises(Exception, match=r"not an image in an accepted format \(JPEG, PNG, WebP, BMP, GIF or TIFF\)"):
        _client(url).predict(handle_file(str(eps)), 0.5, False, api_name="/segment")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(26 * 2**20))
    with pytest.raises(Exception, match="images are limited to 25 MB"):
        _client(url).predict(handle_file(str(big)), 0.5, False, api_name="/segment")
    _works(url, small)


def test_a_result_is_bound_to_the_client_that_made_it(app, small):
    """Another client that reuses a visitor's session hash does not get their full-size overlay."""
    from gradio_client import handle_file

    _, url, _ = app
    owner = _client(url)
    owner.predict(handle_file(str(small)), 0.5, False, api_name="/segment")
    intruder = _client(url, headers={"user-agent": "someone else"})
    intruder.session_hash = owner.session_hash
    with pytest.raises(Exception, match="belongs to another browser"):
        intruder.predict(0.5, api_name="/full_overlay")
    full = owner.predict(0.5, api_name="/full_overlay")
    assert Image.open(full).size == (160, 120)
    _works(url, small)


def test_one_visitors_many_requests_never_touch_anothers_files(app, small):
    """Visitor B's 260 requests (re-blends at every opacity, each a new picture) leave visitor A's result alone."""
    from gradio_client import handle_file

    _, url, _ = app
    first = _client(url)
    first.predict(handle_file(str(small)), 0.5, False, api_name="/segment")
    second = _client(url)
    second.predict(handle_file(str(small)), 0.5, False, api_name="/segment")
    reblend = _dependency(url, "reblend")
    agent = {"user-agent": second.headers["user-agent"]}

    def move(k: int) -> bool:
        status, answer = _join(url, reblend, [None, (k % 101) / 100], second.session_hash, agent)
        return status == 200 and answer["success"]

    moved = [move(k) for k in range(260)]  # one at a time: Gradio streams one session's events on one connection
    assert sum(moved) == 260
    full = first.predict(0.3, api_name="/full_overlay")
    assert Image.open(full).size == (160, 120)
    _works(url, small)


def test_files_of_every_visitor_go_when_the_app_stops(build_dir, tmp_path, small):
    from gradio_client import handle_file

    log = tmp_path / "app.log"
    with app_process(build_dir, log, "--backend", "onnxruntime") as (proc, url):
        _client(url).predict(handle_file(str(small)), 0.5, False, api_name="/segment")
        root = Path(re.search(r"visitors' files in (\S+)", log.read_text()).group(1))
        assert any(root.iterdir())
    assert proc.wait(timeout=30) is not None and not root.exists()


def test_a_request_through_a_proxy_makes_the_app_public(app, small):
    """Bound to loopback and not told it is public, the app sees forwarded headers (a reverse proxy in front) and
    from then on refuses engine builds."""
    from gradio_client import handle_file

    _, url, log = app
    through_proxy = _client(url, headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    through_proxy.predict(handle_file(str(small)), 0.5, False, api_name="/segment")
    with pytest.raises(Exception, match="engine builds are turned off on this public app"):
        _client(url).predict("fp32", api_name="/build_engine")
    deadline = time.time() + 10
    while "treating the app as public" not in log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    assert "treating the app as public" in log.read_text()
    _works(url, small)


def test_videos_are_read_only_as_the_files_they_are(app, small, tmp_path):
    """Through the Video tab's API: a playlist naming a server file, and a raw stream with no duration, each refused
    in one sentence before the model is asked; a normal request works after."""
    pytest.importorskip("av")
    from gradio_client import handle_file

    from .test_video_safety import write

    _, url, _ = app
    secret = write(tmp_path / "secret.ts", "mpegts", 10, first=200)
    playlist = tmp_path / "holiday.mp4"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(Exception, match="'holiday.mp4' is an HLS playlist, not a video file the app accepts"):
        _client(url).predict(handle_file(str(playlist)), 0.5, api_name="/segment_video")
    raw = tmp_path / "camera.mp4"
    raw.write_bytes(write(tmp_path / "camera.h264", "h264", 40).read_bytes())
    with pytest.raises(Exception, match="'camera.mp4' is a raw H.264 stream, not a video file the app accepts"):
        _client(url).predict(handle_file(str(raw)), 0.5, api_name="/segment_video")
    _works(url, small)
