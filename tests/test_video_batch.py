"""A one-shot `segment` of a video
starts nothing in the background that its exit would wait for."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("av")

from segdemo import backends  # noqa: E402
from segdemo.bench.clips import make_clip  # noqa: E402

MODEL = "random:tiny"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of 160×120 at 10 fps: 10 frames, so batches of 4 leave a short last one."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 160, 120, 1.0, fps=10)


def test_one_shot_video_command_leaves_no_background_work(clip, build_dir, tmp_path, monkeypatch):
    from segdemo.cli import main

    contexts = []
    create = backends.create

    def recording(name, onnx_file, spans, context=None, **options):
        contexts.append((name, context, options))
        return create(name, onnx_file, spans, context, **options)

    monkeypatch.setattr(backends, "create", recording)
    before = set(threading.enumerate())
    assert main(["segment", str(clip), "--model", MODEL, "--backend", "onnxruntime", "--out", str(tmp_path),
                 "--build-dir", str(build_dir)]) == 0
    (name, context, _), = contexts
    assert name == "onnxruntime" and context.long_lived is False  # a one-shot session: no background compilation
    left = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    assert not left, f"threads the process would wait for at exit: {left}"
    assert (tmp_path / "overlay.mp4").stat().st_size > 0 and (tmp_path / "shares.csv").exists()
