"""A visitor's video is read only as the file it is, within the limits, and a decoder crash or hang costs one job:
hostile inputs made with PyAV here (playlists, lists, raw streams, lying containers) go through real FFmpeg."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from segdemo.bench.clips import make_clip  # noqa: E402
from segdemo.media.video_io import BadVideoError, frames, open_video, probe  # noqa: E402
from segdemo.media.video_job import segment_video  # noqa: E402
from segdemo.media.video_limits import APP_LIMITS, CLI_LIMITS, MP4, VideoFormat, VideoLimits  # noqa: E402

MODEL = "random:tiny"
RAW_H264 = VideoFormat("raw H.264", "h264", (".h264",))


def write(path: Path, fmt: str | None, count: int, size: tuple[int, int] = (64, 48), rate: int = 10,
          options: dict[str, str] | None = None, first: int = 0) -> Path:
    """`count` H.264 frames of `size` (width, height) in FFmpeg's `fmt` muxer; grey levels from `first` on."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (first + k * 10) % 250, np.uint8),
                                               format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 160, 120, 1.2, fps=10)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """60 frames of 320×240: more than the pipe and the job's queues hold, so its child is still decoding."""
    return make_clip(tmp_path_factory.mktemp("clips") / "long.mp4", 320, 240, 2.0, fps=30)


def decoder_children() -> list[int]:
    """This process's live decoder children (Linux's /proc lists each thread's children)."""
    pids = [int(p) for f in Path(f"/proc/{os.getpid()}/task").glob("*/children") for p in f.read_text().split()]
    return [p for p in pids if b"segdemo.media.video_child" in Path(f"/proc/{p}/cmdline").read_bytes()]


def assert_one_sentence(error: pytest.ExceptionInfo, name: str, *parts: str) -> None:
    text = str(error.value)
    assert f"'{name}'" in text and "\n" not in text and text.count(". ") == 0, text
    for part in parts:
        assert part in text, text


def assert_next_job_works(clip: Path) -> None:
    assert len(list(frames(clip))) == 12
    assert decoder_children() == []


def test_hls_playlist_naming_a_local_file_is_refused_and_the_file_is_not_read(clip, tmp_path):
    secret = write(tmp_path / "secret.ts", "mpegts", 10, first=200)
    playlist = tmp_path / "playlist.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n")
    renamed = tmp_path / "playlist.mp4"
    renamed.write_bytes(playlist.read_bytes())
    through_ffmpeg = replace(APP_LIMITS, formats=(replace(MP4, suffixes=(".m3u8", ".mp4")),))  # past the suffix check
    past = time.time() - 3 * 86400
    os.utime(secret, (past, secret.stat().st_mtime))  # relatime updates an atime this old on any read

    with pytest.raises(BadVideoError) as error:
        probe(playlist)
    assert_one_sentence(error, "playlist.m3u8", "is not a video file the app accepts: MP4/MOV (.mp4")
    for path in (playlist, renamed):
        with pytest.raises(BadVideoError) as error:
            segment_video(None, path, tmp_path / "out.mp4", limits=through_ffmpeg)  # refused before the engine
        assert_one_sentence(error, path.name, "is an HLS playlist, not a video file the app accepts")
    assert not (tmp_path / "out.mp4").exists()
    assert secret.stat().st_atime == past, "the segment named in the playlist was read"
    # The attack is real: FFmpeg left to itself follows the playlist and decodes the segment (and the atime shows it).
    with av.open(str(playlist)) as container:
        assert [int(f.to_ndarray(format="rgb24").mean()) for f in container.decode(video=0)][:1] == [200]
    assert_next_job_works(clip)
    if secret.stat().st_atime == past:
        pytest.skip("this filesystem does not record reads, so the atime check above proved nothing")


def test_ffconcat_list_is_refused(clip, tmp_path):
    write(tmp_path / "part.mp4", "mp4", 5)
    listing = tmp_path / "list.mp4"
    listing.write_text(f"ffconcat version 1.0\nfile '{tmp_path / 'part.mp4'}'\n")
    with pytest.raises(BadVideoError) as error:
        probe(listing)
    assert_one_sentence(error, "list.mp4", "is a concat list, not a video file the app accepts")
    assert_next_job_works(clip)


def test_raw_h264_stream_is_refused_by_the_allowlist_and_stopped_at_the_limit_while_decoding(clip, tmp_path):
    raw = write(tmp_path / "long.h264", "h264", 40)  # 4 s at 10 fps; the raw stream knows no duration nor rate
    with pytest.raises(BadVideoError) as error:
        probe(raw)
    assert_one_sentence(error, "long.h264", "is not a video file the app accepts")
    renamed = tmp_path / "long.mp4"
    renamed.write_bytes(raw.read_bytes())
    with pytest.raises(BadVideoError) as error:
        probe(renamed)
    assert_one_sentence(error, "long.mp4", "is a raw H.264 stream, not a video file the app accepts")
    lenient = replace(APP_LIMITS, seconds=1.0, formats=(RAW_H264,))
    assert probe(raw, lenient).seconds == 0  # the metadata cannot tell: only decoding can
    seen = []
    with pytest.raises(BadVideoError) as error:
        for frame in frames(raw, limits=lenient):
            seen.append(frame)
    assert_one_sentence(error, "long.h264", "videos are limited to 1 s")
    assert 10 <= len(seen) <= 27  # 1 s at the rate FFmpeg assumes (25 fps), with its tolerance
    assert_next_job_works(clip)


def test_mkv_claiming_no_duration_is_stopped_at_the_limit_while_decoding(clip, session_factory, tmp_path):
    mkv = write(tmp_path / "live.mkv", "matroska", 30, options={"live": "1"})  # 3 s, no duration written
    limits = replace(APP_LIMITS, seconds=1.0)
    assert probe(mkv, limits).seconds < 1.0
    with pytest.raises(BadVideoError) as error:
        segment_video(session_factory(MODEL), mkv, tmp_path / "out.mp4", limits=limits)
    assert_one_sentence(error, "live.mkv", "goes on past 1 s", "videos are limited to 1 s")
    assert not (tmp_path / "out.mp4").exists()
    assert_next_job_works(clip)


def test_frame_size_is_checked_on_every_frame(clip, tmp_path):
    small = write(tmp_path / "small.ts", "mpegts", 10)
    large = write(tmp_path / "large.ts", "mpegts", 10, size=(320, 240))
    grows = tmp_path / "grows.ts"
    grows.write_bytes(small.read_bytes() + large.read_bytes())  # a stream that changes its size mid-way
    with pytest.raises(BadVideoError) as error:
        list(frames(grows, limits=replace(CLI_LIMITS, side=128)))
    assert_one_sentence(error, "grows.ts", "is 320×240 from frame", "videos are limited to 128 px")
    within = list(frames(grows, limits=CLI_LIMITS))  # within the limits: scaled to the first size
    assert len(within) == 20 and {f.shape for f in within} == {(48, 64, 3)}
    assert_next_job_works(clip)


def test_a_killed_decoder_fails_its_job_in_one_sentence_and_the_next_job_works(clip, long_clip, session_factory,
                                                                                tmp_path):
    session, killed = session_factory(MODEL), []

    def kill_the_decoder(done: int, total: int) -> None:
        if not killed:
            killed.extend(decoder_children())
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(BadVideoError) as error:
        segment_video(session, long_clip, tmp_path / "out.mp4", progress=kill_the_decoder)
    assert_one_sentence(error, "long.mp4", "the video decoder crashed on", "(SIGKILL)")
    assert len(killed) == 1 and not (tmp_path / "out.mp4").exists()
    assert decoder_children() == []
    assert segment_video(session, clip, tmp_path / "next.mp4").frames == 12


def test_a_hung_decoder_is_killed_after_the_stall_limit(clip, long_clip):
    with open_video(long_clip, replace(APP_LIMITS, stall=1.0)) as child:
        os.kill(child.pid, signal.SIGSTOP)
        start = time.perf_counter()
        with pytest.raises(BadVideoError) as error:
            list(child.frames())
        assert time.perf_counter() - start < 5
    assert_one_sentence(error, "long.mp4", "stopped responding on", "for 1 s")
    assert_next_job_works(clip)


def test_limits_never_allow_demuxers_that_open_other_files():
    for demuxer in ("hls", "concat", "image2", "dash"):
        with pytest.raises(ValueError, match="never allowed"):
            VideoLimits(formats=(VideoFormat("x", demuxer, (".x",)),))
    assert "h264" not in APP_LIMITS.whitelist and "mpegts" in CLI_LIMITS.whitelist
    assert "mpegts" not in APP_LIMITS.whitelist
