"""Video frames in batches: the batch path gives the one-frame path's shares, and a one-shot `segment` of a video
starts nothing in the background that its exit would wait for."""

from __future__ import annotations

import threading

import numpy as np
import pytest

av = pytest.importorskip("av")

from segdemo import backends  # noqa: E402
from segdemo.backends import torch_cuda  # noqa: E402
from segdemo.bench.clips import make_clip  # noqa: E402
from segdemo.media.video_job import segment_video  # noqa: E402
from segdemo.pipeline import Session  # noqa: E402
from segdemo.profiling.spans import SpanRecorder  # noqa: E402
from segdemo.segmentation import EncoderFrame  # noqa: E402

MODEL = "random:tiny"
CUDA_REASON = torch_cuda.unavailable_reason()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of 160×120 at 10 fps: 10 frames, so batches of 4 leave a short last one."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 160, 120, 1.0, fps=10)


def _batch_sizes(spans: SpanRecorder) -> list[int]:
    return [s.attrs["batch"] for s in spans.spans if s.name == "execute" and "batch" in s.attrs]


def test_batched_frames_give_the_one_frame_shares(clip, session_factory, build_dir, tmp_path):
    one = segment_video(session_factory(MODEL, "fp32"), clip, tmp_path / "one.mp4", 0.5)  # int8 quantizes per run
    spans = SpanRecorder()
    with Session(MODEL, "onnxruntime", "fp32", build_dir=build_dir, warm_up="off", max_batch=4) as batched:
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
    # Idle thread-pool workers (the class map's) end the moment the interpreter exits: concurrent.futures wakes them.
    from concurrent.futures import thread as pool_threads

    idle = {t for t, work in pool_threads._threads_queues.items() if work.empty()}
    left = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon and t not in idle]
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
        batched = session.segment_frames(pictures, spans, 0.5, i420=True)
        assert _batch_sizes(spans) == [len(pictures)] and not any(s.name == "resize" for s in spans.spans)
        alone = [session.segment(p, record=False) for p in pictures]
        (lone,) = session.segment_frames(pictures[:1], SpanRecorder(), 0.5, i420=True)  # a batch of one: no graph
        encoded = session.encoder_frames(pictures, SpanRecorder(), 0.5)  # the video job's: counts and I420 only
    assert lone.overlay_i420 is not None and (lone.overlay_i420 == batched[0].overlay_i420).mean() > 0.99
    for e, b in zip(encoded, batched, strict=True):
        # the same batch replayed again: what comes back is the full result's, bar kernels that round differently
        assert isinstance(e, EncoderFrame) and e.i420 and e.size == (120, 160) and b.overlay_i420 is not None
        assert e.overlay.shape == b.overlay_i420.shape and (e.overlay == b.overlay_i420).mean() > 0.99
        shares_e, shares_b = ({x.id: x.share for x in r.legend} for r in (e, b))
        assert all(abs(shares_e.get(k, 0) - shares_b.get(k, 0)) < 0.01 for k in shares_e.keys() | shares_b.keys())
    for b, a in zip(batched, alone, strict=True):
        # the network at batch 16 rounds like batch 1 only as far as cuDNN's kernels do; all after it is exact
        assert float((b.class_map == a.class_map).mean()) > 0.99
        shares_b, shares_a = ({e.id: e.share for e in r.legend} for r in (b, a))
        assert all(abs(shares_b.get(k, 0) - shares_a.get(k, 0)) < 0.01 for k in shares_b.keys() | shares_a.keys())
        assert b.display_overlay(0.5).shape == a.display_overlay(0.5).shape == (120, 160, 3)
        # the overlay for the encoder, made on the device: libswscale's conversion of the RGB overlay, within 1
        want = av.VideoFrame.from_ndarray(b.display_overlay(0.5), format="rgb24").reformat(format="yuv420p")
        assert b.overlay_i420 is not None and a.overlay_i420 is None
        assert np.abs(b.overlay_i420.astype(np.int16) - want.to_ndarray()).max() <= 1


@pytest.mark.parametrize("height", [120, 118])  # 118: its height is no multiple of 4, so no I420 (render._i420)
def test_an_encoder_only_job_downloads_its_counts_and_overlay_alone(monkeypatch, height):
    """What torch-cuda's one download holds (run on CPU tensors): a video frame's job (RenderJob.encoder_only) gets the
    counts and I420 overlay a full job gets — or its RGB overlay where no I420 is made — and nothing else."""
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from segdemo.backends import RenderJob
    from segdemo.backends.torch_cuda import render
    from segdemo.model.labels import ADE20K_LABELS, palette

    from .conftest import photo

    downloaded: list[int] = []

    def download(parts):  # the pinned block's copies, made on the host here
        downloaded.append(sum(part.numel() for part in parts))
        return [part.clone() for part in parts]

    class Event:  # CUDA events: nothing to time on the CPU
        def record(self, *_):
            pass

        synchronize = record

    monkeypatch.setattr(render, "download", download)
    pictures = render.Pictures(torch.device("cpu"), None, [Event()] * 6, palette(ADE20K_LABELS))
    size = (height, 160)
    image = torch.from_numpy(photo("astronaut", size).copy())
    classes = torch.from_numpy(np.random.default_rng(1).integers(0, 150, size, dtype=np.uint8))
    full_job = RenderJob(None, 0.5, size, size, i420=True)
    # as NVDEC's frames come (no host copy, so a full job downloads the display picture too)
    (full,) = pictures.render_and_download([(full_job, image, None, (classes, classes))])
    (frame,) = pictures.render_and_download([(replace(full_job, encoder_only=True), image, None, (classes, classes))])
    assert np.array_equal(frame.counts, full.counts)
    assert frame.class_map is None and frame.display_image is None and frame.display_map is None
    pixels = height * 160
    if height % 4 == 0:
        assert frame.overlay_i420 is not None and np.array_equal(frame.overlay_i420, full.overlay_i420)
        assert frame.display_overlay is None and downloaded == [256 * 8 + pixels * 8 + pixels * 3 // 2,
                                                                256 * 8 + pixels * 3 // 2]
    else:
        assert frame.overlay_i420 is None and full.overlay_i420 is None
        assert frame.display_overlay is not None and np.array_equal(frame.display_overlay, full.display_overlay)
        assert downloaded == [256 * 8 + pixels * 8, 256 * 8 + pixels * 3]


def test_encoder_takes_i420_as_the_device_makes_it(clip, tmp_path):
    """I420 frames are encoded as they are: the same video as from the RGB frames libswscale converts."""
    import queue
    from fractions import Fraction

    from segdemo.media.video_io import Encoder, frames

    pictures = list(frames(clip))
    planar = [av.VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p").to_ndarray() for p in pictures]
    decoded = []
    for name, batch in (("rgb", pictures), ("i420", planar)):
        pending: queue.Queue = queue.Queue()
        errors: list[BaseException] = []
        with av.open(str(tmp_path / f"{name}.mp4"), "w") as container:
            writer = Encoder(container, Fraction(10), SpanRecorder(), pending, errors)
            writer.start()
            pending.put(batch[:4])
            pending.put(batch[4:])
            pending.put(None)
            writer.join()
        assert not errors
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            decoded.append([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(decoded[0]) == len(decoded[1]) == 10 and decoded[0][0].shape == (120, 160, 3)
    assert all((a == b).all() for a, b in zip(*decoded, strict=True))


def test_pace_says_frames_per_second_and_the_real_time_factor_as_the_job_goes():
    from fractions import Fraction

    from segdemo.media.video_job import Pace

    lines: list[tuple[float, str]] = []
    pace = Pace(Fraction(10), lambda fraction, line: lines.append((fraction, line)))
    pace.start -= 2.0  # the job started two seconds ago
    pace(30, 60)
    (fraction, line), = lines
    assert fraction == 0.5 and line.startswith("30 / 60 frames · 15.0 frames/s · 1.50× real time")


def test_a_decoder_child_started_before_the_session_is_the_jobs_when_its_mode_fits(clip, session_factory, tmp_path):
    """The command line starts the job's decoder child before the session loads: the job takes it (one child, not a
    probe's and the job's), or — started for NVDEC that the session does not use — closes it and starts one that
    decodes; either way no child outlives the job."""
    from segdemo.media.video_io import APP_LIMITS, open_video
    from segdemo.media.video_job import decoder_mode

    assert decoder_mode("onnxruntime") == "decode"
    session = session_factory(MODEL)
    results = []
    for mode in ("decode", "packets"):
        child, spans = open_video(clip, APP_LIMITS, mode), SpanRecorder()
        results.append(segment_video(session, child, tmp_path / f"{mode}.mp4", 0.5, spans=spans))
        (probe,) = [s for s in spans.spans if s.name == "probe"]
        assert probe.attrs["started_before"] is (mode == "decode")
        assert child.process.poll() is not None  # closed by the job
    assert results[0].frames == results[1].frames == 10
    np.testing.assert_allclose(results[0].shares, results[1].shares, atol=1e-6)
