"""Dynamic batching: per-image results identical to unbatched runs (fp32), mixed sizes in one batch, errors; the
batcher itself with any batch function (render jobs are batched on a GPU: tests/test_torch_cuda.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from segdemo import backends
from segdemo.batcher import Batcher
from segdemo.errors import BadImageError, SegdemoError
from segdemo.image.visuals import colour_mask
from segdemo.model.labels import generated_palette
from segdemo.pipeline import Session
from segdemo.profiling.spans import INFERENCE, SpanRecorder

from .conftest import photo

SIZES = (("astronaut", (300, 400)), ("coffee", (512, 512)), ("chelsea", (700, 500)), ("rocket", (256, 384)))


@pytest.fixture(scope="module")
def batched(build_dir):
    with Session("random:tiny", "onnxruntime", build_dir=build_dir, max_batch=4, batch_window_ms=50) as session:
        yield session


def test_batched_and_unbatched_results_are_identical_per_image(batched, session_factory):
    images = [photo(name, size) for name, size in SIZES] * 3
    alone = [batched.segment(image).class_map for image in images]  # one at a time: batches of one
    with ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(batched.segment, images))
    # A request that found none other on its way ran unbatched (no "batch" span); the others rode in batches.
    spans = [[s for s in r.spans.spans if s.name == "batch"] for r in together]
    sizes = [found[0].attrs["size"] if found else 1 for found in spans]
    assert max(sizes) > 1, f"no batch formed: {sizes}"
    mixed = {}  # batch number → output sizes that rode in it
    for result, found in zip(together, spans, strict=True):
        for span in found:
            mixed.setdefault(span.attrs["batch"], set()).add(result.class_map.shape)
    assert any(len(shapes) > 1 for shapes in mixed.values()), "no batch held images of different sizes"
    for image, single, result in zip(images, alone, together, strict=True):
        assert result.class_map.shape == image.shape[:2]
        assert np.array_equal(result.class_map, single), "a request's pixels changed with the batch it rode in"
    # The split graphs agree with the fused graph of the unbatched backend (ONNX Runtime fuses across the split).
    fused = session_factory("random:tiny").segment(images[0]).class_map
    assert float((fused == alone[0]).mean()) > 0.9999


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_one_works(batched, monkeypatch):
    real = batched.backend.run_batch
    calls = []

    def broken(inputs, spans):
        calls.append(len(inputs))
        if len(calls) == 1:
            raise RuntimeError("engine fault")
        return real(inputs, spans)

    monkeypatch.setattr(batched.backend, "run_batch", broken)
    with pytest.raises(RuntimeError, match="engine fault"):
        batched.segment(photo("coffee", (200, 300)))
    assert batched.segment(photo("coffee", (200, 300))).class_map.shape == (200, 300)


def test_a_lone_request_takes_the_unbatched_path(build_dir):
    """Nothing else in flight: no batch to wait for or to ride in — the request runs as an unbatched session's
    would (a batch of one measured slower: the hand-offs to the dispatcher and back), whatever the window."""
    with Session("random:tiny", "onnxruntime", build_dir=build_dir, max_batch=4, batch_window_ms=60_000) as session:
        result = session.segment(photo("rocket", (128, 160)))
        assert result.info["infer_ms"] < 30_000
        assert not [s for s in result.spans.spans if s.name == "batch"]
        (request,) = [s for s in result.spans.spans if s.name == "request"]
        assert request.attrs["route"] == "HOST"


def test_a_request_on_its_way_makes_a_batch_worth_waiting_for(build_dir):
    """A ticket held by a request still decoding counts: the batcher is not alone, so the next one batches."""
    with Session("random:tiny", "onnxruntime", build_dir=build_dir, max_batch=4, batch_window_ms=50) as session:
        assert session.batcher is not None
        with session.batcher.expect():  # another request on its way (decoding)
            result = session.segment(photo("rocket", (128, 160)))
        (span,) = [s for s in result.spans.spans if s.name == "batch"]
        assert span.attrs["size"] == 1  # the other never came within the window


def test_a_backend_without_batches_refuses_max_batch(build_dir):
    # Every local backend batches (TensorRT's plans: tests/test_tensorrt_batch.py); a Triton server batches by its
    # model's own config, so the triton backend takes no max_batch — refused before any connection is tried.
    with pytest.raises(SegdemoError, match="'triton://127.0.0.1:1/segformer' has no option max_batch — it takes"):
        backends.create("triton://127.0.0.1:1/segformer", build_dir / "missing.onnx", None, max_batch=4)


COLOURS = generated_palette(20)


def colour_masks(maps: list[np.ndarray], spans: SpanRecorder) -> list[np.ndarray | Exception]:
    """A batch function of real work: each class map's colour picture; a map without pixels is refused alone."""
    with spans.span("colour masks", INFERENCE, count=len(maps)):
        return [BadImageError("no pixels") if m.size == 0 else colour_mask(m, COLOURS) for m in maps]


def submit_all(batcher: Batcher, items: list) -> tuple[list, list[SpanRecorder]]:
    """Each item from its own thread, all announced first (tickets), so batches fill up to max_batch."""
    tickets = [batcher.expect() for _ in items]
    recorders = [SpanRecorder() for _ in items]

    def submit(k: int):
        try:
            return batcher.submit(items[k], recorders[k], tickets[k])
        except Exception as exc:  # noqa: BLE001 — the test looks at which request got which error
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(submit, range(len(items)))), recorders


def test_any_batch_function_gives_each_request_its_own_result_or_error():
    lock = threading.Lock()
    batcher = Batcher(colour_masks, 4, lambda: lock, window_s=30)  # announced requests always come: no 30 s wait
    rng = np.random.default_rng(7)
    maps = [rng.integers(0, 20, (5 + k, 9 + 2 * k), dtype=np.uint8) for k in range(7)]
    maps.insert(3, np.zeros((0, 4), np.uint8))
    try:
        results, recorders = submit_all(batcher, maps)
    finally:
        batcher.close()
    for class_map, result in zip(maps, results, strict=True):
        if class_map.size == 0:
            assert isinstance(result, BadImageError)  # refused alone: the others of its batch went on
        else:
            assert np.array_equal(result, colour_mask(class_map, COLOURS))
    batches: dict[int, list[int]] = {}
    for recorder in recorders:
        (span,) = [s for s in recorder.spans if s.name == "batch"]
        assert span.attrs["size"] == 4
        batches.setdefault(span.attrs["batch"], []).append(span.attrs["position"])
        assert [s.attrs["count"] for s in recorder.spans if s.name == "colour masks"] == [4]  # the batch's spans
    assert sorted(map(sorted, batches.values())) == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_a_batch_function_that_raises_fails_every_request_of_its_batch():
    lock = threading.Lock()
    calls = []

    def broken(items: list[np.ndarray], spans: SpanRecorder) -> list[np.ndarray]:
        calls.append(len(items))
        raise RuntimeError("device fault")

    batcher = Batcher(broken, 4, lambda: lock, window_s=30)
    try:
        results, _ = submit_all(batcher, [np.zeros((2, 2), np.uint8)] * 3)
    finally:
        batcher.close()
    assert calls == [3]
    assert all(isinstance(r, RuntimeError) and str(r) == "device fault" for r in results)


def test_a_reloaded_backend_still_batches(build_dir):
    with Session("random:tiny", "onnxruntime", build_dir=build_dir, max_batch=2, batch_window_ms=50) as session:
        session.reload_backend("fp32")  # what the Engine tab's rebuild does
        assert session.backend.max_batch == 2 and session.backend.batched is not None
        images = [photo("coffee", (200, 300)), photo("rocket", (256, 384))]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(session.segment, images))
        assert [r.class_map.shape for r in results] == [(200, 300), (256, 384)]


@pytest.mark.parametrize(("max_batch", "precision"), [(1, "fp32"), (1, "int8"), (2, "fp32")])
def test_ort_spinning_and_threads_are_the_operators_choice(build_dir, monkeypatch, max_batch, precision):
    """A batched or int8 session stops spinning when a run returns (its runs alternate with class maps on the
    host); SEGDEMO_ORT_SPIN=0 keeps every session from spinning (a small model under many visitors on a few cores);
    an unbatched fp32 one spins by default (large models need it). SEGDEMO_ORT_THREADS sets the threads."""
    from segdemo.backends.onnxruntime_cpu import SPIN_ENV, THREADS_ENV

    def entries(env: str | None) -> tuple[str, str]:
        if env is None:
            monkeypatch.delenv(SPIN_ENV, raising=False)
        else:
            monkeypatch.setenv(SPIN_ENV, env)
        with Session("random:tiny", "onnxruntime", precision, build_dir=build_dir, max_batch=max_batch,
                     warm_up="off") as session:
            assert session.backend.precision == precision
            options = session.backend.session.get_session_options()
            return tuple(entry(options, key) for key in ("session.intra_op.allow_spinning",
                                                         "session.force_spinning_stop"))

    def entry(options, key: str) -> str:
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:  # "SessionOptions does not have configuration with key": ONNX Runtime's default
            return ""

    in_turn = max_batch > 1 or precision == "int8"
    assert entries(None) == (("", "1") if in_turn else ("", ""))
    assert entries("0") == ("0", "")
    monkeypatch.setenv(THREADS_ENV, "1")
    with Session("random:tiny", "onnxruntime", precision, build_dir=build_dir, max_batch=max_batch,
                 warm_up="off") as session:
        assert session.backend.threads == 1 == session.backend.session.get_session_options().intra_op_num_threads


def test_each_request_takes_one_route():
    """Session.segment's four routes, decided in one place: every combination of what matters."""
    from segdemo.pipeline import BATCH_MAX_PIXELS, Route, choose_route

    small, large = 512 * 512, BATCH_MAX_PIXELS + 1
    assert choose_route(on_device=True, batching=False, pixels=small, batch_renders=True) is Route.DEVICE
    assert choose_route(on_device=True, batching=True, pixels=small, batch_renders=True) is Route.DEVICE_BATCH
    assert choose_route(on_device=True, batching=True, pixels=large, batch_renders=True) is Route.DEVICE
    # A BatchRunner batches model inputs: a request the device could render whole joins the batch on the host side.
    assert choose_route(on_device=True, batching=True, pixels=small, batch_renders=False) is Route.HOST_BATCH
    assert choose_route(on_device=False, batching=True, pixels=small, batch_renders=False) is Route.HOST_BATCH
    # A BatchRenderer's batches are of whole requests: one it cannot render goes alone, on the host.
    assert choose_route(on_device=False, batching=True, pixels=small, batch_renders=True) is Route.HOST
    assert choose_route(on_device=False, batching=False, pixels=small, batch_renders=False) is Route.HOST
    assert choose_route(on_device=False, batching=True, pixels=large, batch_renders=False) is Route.HOST


def test_the_fast_gil_switch_holds_only_while_the_engine_has_a_backlog():
    """The dispatcher's short GIL switch interval is process-wide: it holds only from a batch that ended with
    requests waiting for the engine to one that ended with none, so a lone request, or a process whose engine keeps
    up, runs under the interval the process had."""
    import sys
    import time

    from segdemo.batcher import SWITCH_INTERVAL_S

    lock, release, seen = threading.Lock(), threading.Event(), []

    def run(items: list[str], spans: SpanRecorder) -> list[str]:
        seen.append((len(items), sys.getswitchinterval()))
        if len(seen) == 1:
            assert release.wait(30)
        return items

    before = sys.getswitchinterval()
    batcher = Batcher(run, 4, lambda: lock, window_s=0.01)
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(batcher.submit, "a", SpanRecorder())
            while not seen:
                time.sleep(0.01)
            rest = [pool.submit(batcher.submit, item, SpanRecorder()) for item in "bc"]
            while batcher._queue.qsize() < 2:
                time.sleep(0.01)
            release.set()
            assert [first.result(), *(r.result() for r in rest)] == ["a", "b", "c"]
        assert seen == [(1, before), (2, SWITCH_INTERVAL_S)]  # the second batch ran while b and c had waited
        assert sys.getswitchinterval() == before  # that batch left no backlog
        assert batcher.submit("d", SpanRecorder()) == "d" and seen[-1] == (1, before)
    finally:
        batcher.close()
