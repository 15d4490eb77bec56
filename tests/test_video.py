"""Video files: small H.264 clips made with PyAV go through the real model; bad inputs get one sentence each."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from segdemo.bench.clips import make_clip  # noqa: E402
from segdemo.media.video_io import APP_LIMITS, BadVideoError, probe, write_mp4  # noqa: E402
from segdemo.media.video_job import segment_frames, segment_video, write_outputs  # noqa: E402
from segdemo.profiling.spans import SpanRecorder  # noqa: E402

MODEL = "random:tiny"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1.2 s of 160×120 at 10 fps: 12 frames, each different."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 160, 120, 1.2, fps=10)


def decoded(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return container.format.name, stream.codec_context.name, stream.codec_context.pix_fmt, \
            stream.average_rate, frames


def test_segmented_video_is_h264_mp4_with_every_frame_and_its_shares(clip, session_factory, tmp_path):
    session = session_factory(MODEL)
    seen = []
    result = segment_video(session, clip, tmp_path / "out.mp4", 0.5, progress=lambda done, total: seen.append(done))
    container, codec, pix_fmt, rate, frames = decoded(result.path)
    assert "mp4" in container and codec == "h264" and pix_fmt == "yuv420p" and rate == 10
    assert len(frames) == result.frames == 12 and frames[0].shape == (120, 160, 3)
    assert seen[-1] == 12 and seen == sorted(seen)
    assert result.shares.shape == (12, 150)
    assert np.allclose(result.shares.sum(axis=1), 1.0, atol=1e-5)
    # The shares are those of each frame's own class map.
    source = [f for f in decoded(clip)[4]]
    first = session.segment(source[0], record=False)
    for entry in first.legend:
        assert result.shares[0, entry.id] == pytest.approx(entry.share, abs=1e-6)
    # CSV/JSON/trace: one row per frame, classes present as columns.
    files = write_outputs(result, tmp_path, session.load_spans.spans)
    rows = list(csv.reader(files["csv"].open()))
    assert len(rows) == 1 + 12 and rows[0][:2] == ["frame", "time_s"] and float(rows[3][1]) == pytest.approx(0.2)
    data = json.loads(files["json"].read_text())
    assert data["frames"] == 12 and len(data["shares"]) == 12 and data["random_weights"] is True
    assert [c["name"] for c in data["classes"]] == rows[0][2:]
    trace = json.loads(files["profiling"].read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"decode", "segment", "encode", "execute"} <= names
    figure = result.figure(top=5)
    assert len(figure.data) == min(5, len(result.present())) and len(figure.data[0].x) == 12


def test_segment_frames_is_one_call_per_list(clip, session_factory):
    """The batch seam: a list of frames in, one result per frame out — its legend and the overlay for the encoder
    (RGB from a host backend) — the same as one at a time."""
    session = session_factory(MODEL)
    frames = decoded(clip)[4][:3]
    results = segment_frames(session, frames, SpanRecorder(), 0.5)
    assert [r.size for r in results] == [(120, 160)] * 3 and not any(r.i420 for r in results)
    for r, f in zip(results, frames, strict=True):
        alone = session.segment(f, record=False)
        assert r.legend == alone.legend and (r.overlay == alone.display_overlay(0.5)).all()


def test_portrait_phone_video_comes_out_upright_and_odd_sides_are_made_even(session_factory, tmp_path):
    phone = make_clip(tmp_path / "phone.mp4", 160, 120, 0.3, fps=10, rotation=-90)  # stored landscape
    info = probe(phone)
    assert (info.width, info.height, info.rotation) == (120, 160, 270)
    result = segment_video(session_factory(MODEL), phone, tmp_path / "out.mp4")
    assert decoded(result.path)[4][0].shape == (160, 120, 3)
    odd = write_mp4(tmp_path / "odd.mp4", (np.full((121, 161, 3), k * 20, np.uint8) for k in range(3)), 10)
    assert decoded(segment_video(session_factory(MODEL), odd, tmp_path / "odd-out.mp4").path)[4][0].shape == \
        (120, 160, 3)


def _truncated_index(clip, path):
    path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the index (moov) is at the end: lost


def _truncated_data(clip, path):
    make_clip(path, 160, 120, 2.0, fps=10, faststart=True)  # index first, then cut the frames' data
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _no_frames(clip, path):
    make_clip(path, 160, 120, 1.0, fps=10, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 4])  # an index that points at frames that are not there


def _audio_only(clip, path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for k in range(4):
            frame.pts = k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _still_image(clip, path):
    from PIL import Image

    Image.new("RGB", (64, 48), "red").save(path, format="PNG")


@pytest.mark.parametrize("make, message", [
    (lambda clip, p: p.write_text("hello, this is text"), "is not a video file FFmpeg can read"),
    (lambda clip, p: p.write_bytes(b""), "is empty"),
    (_truncated_index, "is not a video file FFmpeg can read"),
    (_truncated_data, "is truncated or damaged"),
    (_no_frames, "has no video frames"),
    (_audio_only, "has no video stream"),
    (_still_image, "is a still image"),
    (lambda clip, p: None, "does not exist"),
], ids=["text", "empty", "truncated-index", "truncated-data", "no-frames", "audio-only", "still-image", "missing"])
def test_bad_video_is_one_sentence(clip, session_factory, tmp_path, make, message):
    path = tmp_path / "input.mp4"
    make(clip, path)
    with pytest.raises(BadVideoError) as info:
        segment_video(session_factory(MODEL), path, tmp_path / "out.mp4")
    text = str(info.value)
    assert message in text and "'input.mp4'" in text and "\n" not in text and text.count(". ") == 0
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("limits, message", [
    (replace(APP_LIMITS, seconds=1.0), "is 1.2 s long; videos are limited to 1 s"),
    (replace(APP_LIMITS, side=128), "is 160×120; videos are limited to 128 px on the long side"),
    (replace(APP_LIMITS, pixels=160 * 100), "is 160×120; videos are limited to"),
    (replace(APP_LIMITS, bytes=1000), "MB; videos are limited to 0 MB"),
], ids=["too-long", "too-wide", "too-many-pixels", "too-large"])
def test_video_beyond_the_limits_is_refused_before_decoding(clip, limits, message):
    with pytest.raises(BadVideoError, match=message):
        probe(clip, limits)


def test_probe_reads_size_rate_and_duration(clip):
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.frames, info.codec) == (160, 120, Fraction(10), 12, "h264")
    assert info.seconds == pytest.approx(1.2, abs=0.01) and info.counted
