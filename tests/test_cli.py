"""The command line: real subprocesses, real files, one-line errors with non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from segdemo.image.visuals import read_class_map


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segdemo", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", [[], ["export"], ["segment"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: segdemo" in result.stdout


def test_segment_writes_three_files(photo_file, tmp_path, build_dir, session_factory):
    out = tmp_path / "out"
    result = run("segment", str(photo_file), "--model", "random:tiny", "--out", str(out),
                 "--build-dir", str(build_dir), "--no-show")
    assert result.returncode == 0, result.stderr
    assert "init time" in result.stderr and "infer time" in result.stderr
    classes = read_class_map(out / "classes.png")
    assert classes.shape == (400, 600)
    expected = session_factory("random:tiny").segment(photo_file).class_map
    assert (classes == expected).all()
    legend = json.loads((out / "legend.json").read_text())
    assert legend["random_weights"] is True and "random weights" in legend["notice"]
    shares = [c["share"] for c in legend["classes"]]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-9
    assert sum(c["pixels"] for c in legend["classes"]) == 400 * 600
    assert {c["id"] for c in legend["classes"]} == set(np.unique(classes).tolist())
    assert (out / "overlay.png").stat().st_size > 1000


def test_export_prints_path_size_and_time(tmp_path):
    result = run("export", "--model", "random:tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path, size, _ = result.stdout.split(maxsplit=2)
    assert path.endswith(".onnx") and size.replace(".", "").isdigit()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello"), "not an image"),
        (lambda p: None, "does not exist"),
    ],
    ids=["zero-bytes", "text", "missing"],
)
def test_bad_image_is_one_line_and_nonzero(tmp_path, make, message):
    image = tmp_path / "input.png"
    make(image)
    result = run("segment", str(image), "--model", "random:tiny", "--no-show", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_model_is_one_line(tmp_path, photo_file):
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "export", "--model", "nvidia/segformer-b0-finetuned-ade-512-512",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "random:b0" in result.stderr and "local directory" in result.stderr


def test_segment_video_writes_mp4_shares_and_trace(tmp_path, build_dir):
    av = pytest.importorskip("av")
    from segdemo.bench.clips import make_clip

    clip = make_clip(tmp_path / "clip.mp4", 160, 120, 0.8, fps=10)
    out = tmp_path / "out"
    result = run("segment", str(clip), "--model", "random:tiny", "--out", str(out), "--build-dir", str(build_dir))
    assert result.returncode == 0, result.stderr
    assert "real time" in result.stderr
    with av.open(str(out / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 10
        assert sum(1 for _ in container.decode(stream)) == 8
    rows = (out / "shares.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("frame,time_s,")
    data = json.loads((out / "shares.json").read_text())
    assert data["frames"] == 8 and len(data["shares"]) == 8
    assert json.loads((out / "profiling.json").read_text())["traceEvents"]


@pytest.mark.parametrize("content, message", [(b"not a video at all", "is not a video file"),
                                              (b"", "is empty")], ids=["text", "empty"])
def test_bad_video_is_one_line_and_nonzero(tmp_path, content, message):
    pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(content)
    result = run("segment", str(clip), "--model", "random:tiny", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_segment_ends_its_process_at_once_with_every_file_written(tmp_path, build_dir):
    """`segment` as the process's entry ends without the interpreter's teardown (an exit hook never runs), yet its
    files are complete, its lines printed and its exit code the command's."""
    av = pytest.importorskip("av")
    from segdemo.bench.clips import make_clip

    clip = make_clip(tmp_path / "clip.mp4", 160, 120, 0.5, fps=10)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    script = ("import atexit, sys\nfrom segdemo.cli import main\natexit.register(print, 'teardown ran')\n"
              "sys.argv[0] = 'segdemo'\nsys.exit(main())")
    out = tmp_path / "out"
    runs = [subprocess.run([sys.executable, "-c", script, "segment", str(name), "--model", "random:tiny", "--out",
                            str(out), "--build-dir", str(build_dir)], capture_output=True, text=True, timeout=600)
            for name in (clip, tmp_path / "bad.mp4")]
    (done, bad) = runs
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout and done.stdout.splitlines()[-1].startswith("profiling")
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5  # the MP4 closed: index written, every frame in it
    assert len((out / "shares.csv").read_text().splitlines()) == 1 + 5
    assert json.loads((out / "shares.json").read_text())["frames"] == 5
    assert json.loads((out / "profiling.json").read_text())["traceEvents"]
    assert bad.returncode == 2 and "is not a video file" in bad.stderr and "teardown ran" not in bad.stdout
    # Called with its arguments (a test, a script) it returns: the caller's process goes on.
    import segdemo.cli

    assert segdemo.cli.main(["segment", str(tmp_path / "bad.mp4"), "--model", "random:tiny"]) == 2
