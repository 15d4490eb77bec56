"""Video frames in batches: the batch path gives the one-frame path's shares, and a one-shot `segment` of a video
starts nothing in the background that its exit would wait for."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("av")

from segdemo import backends  # noqa: E402
from segdemo.backends import torch_cuda  # noqa: E402
from segdemo.bench.clips import make_clip  # noqa: E402
from segdemo.media.video_job import segment_video  # noqa: E402
from segdemo.pipeline import Session  # noqa: E402
from segdemo.profiling.spans import SpanRecorder  # noqa: E402

MODEL = "random:tiny"
CUDA_REASON = torch_cuda.unavailable_reason()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of 160×120 at 10 fps: 10 frames, so batches of 4 leave a short last one."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 160, 120, 1.0, fps=10)


def _batch_sizes(spans: SpanRecorder) -> list[int]:
    return [s.attrs["batch"] for s in spans.spans if s.name == "execute" and "batch" in s.attrs]


def test_batched_frames_give_the_one_frame_shares(clip, session_factory, build_dir, tmp_path):
    one = segment_video(session_factory(MODEL), clip, tmp_path / "one.mp4", 0.5)
    spans = SpanRecorder()
    with Session(MODEL, "onnxruntime", build_dir=build_dir, warm_up="off", max_batch=4) as batched:
        many = segment_video(batched, clip, tmp_path / "many.mp4", 0.5, spans=spans)
    assert _batch_sizes(spans) == [4, 4, 2]  # the model inputs went through the backend's batch call
    assert many.frames == one.frames == 10 and many.shares.shape == one.shares.shape
    np.testing.assert_allclose(many.shares, one.shares, atol=1e-6)
    assert many.present() == one.present()


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
    (name, context, options), = contexts
    assert name == "onnxruntime" and context.long_lived is False  # a one-shot session: no background compilation
    assert "max_batch" not in options  # CPU backends run frames one at a time: no batched graphs to export
    left = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    assert not left, f"threads the process would wait for at exit: {left}"
    assert (tmp_path / "overlay.mp4").stat().st_size > 0 and (tmp_path / "shares.csv").exists()


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=f"needs a CUDA GPU: {CUDA_REASON}")
def test_one_shot_torch_cuda_batches_frames_on_the_device_as_one_at_a_time(clip, build_dir):
    from segdemo.media.video_io import frames

    pictures = list(frames(clip))
    with Session("random:b0", "torch-cuda", "fp16", build_dir=build_dir, warm_up="off", max_batch=16) as session:
        backend = session.backend
        assert backend.compiling is None and sorted(backend.network.batch_graphs) == [16]
        spans = SpanRecorder()
        batched = session.segment_frames(pictures, spans, 0.5)
        assert _batch_sizes(spans) == [len(pictures)] and not any(s.name == "resize" for s in spans.spans)
        alone = [session.segment(p, record=False) for p in pictures]
    for b, a in zip(batched, alone, strict=True):
        # the network at batch 16 rounds like batch 1 only as far as cuDNN's kernels do; all after it is exact
        assert float((b.class_map == a.class_map).mean()) > 0.99
        shares_b, shares_a = ({e.id: e.share for e in r.legend} for r in (b, a))
        assert all(abs(shares_b.get(k, 0) - shares_a.get(k, 0)) < 0.01 for k in shares_b.keys() | shares_a.keys())
        assert b.display_overlay(0.5).shape == a.display_overlay(0.5).shape == (120, 160, 3)
