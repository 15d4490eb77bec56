"""Profiling: spans, Chrome-trace files, the Plotly timeline and per-span summaries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from segdemo.profiling.spans import INFERENCE, LAYER, LOAD, RequestHistory, Span, SpanRecorder, percentile
from segdemo.profiling.timeline import COLOURS, summary_figure, timeline_figure
from segdemo.profiling.trace import chrome_trace, problems


def _check_trace_file(trace: dict) -> list[dict]:
    """The Trace Event Format rules, checked independently of segdemo.profiling.trace.problems."""
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] == "ms"
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert {e["name"] for e in meta} >= {"process_name", "thread_name"}
    for e in complete:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(e)
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
        assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["tid"], int) and isinstance(e["pid"], int)
    named_tids = {e["tid"] for e in meta if e["name"] == "thread_name"}
    assert {e["tid"] for e in complete} <= named_tids
    assert problems(trace) == []
    return complete


@pytest.fixture(scope="module")
def cli_trace(tmp_path_factory, build_dir, session_factory):
    session_factory("random:b0")  # exported once for the whole test session
    out = tmp_path_factory.mktemp("prof")
    from PIL import Image

    from .conftest import photo

    Image.fromarray(photo("chelsea")).save(out / "cat.jpg")
    runs = {}
    for mode in ("plain", "detailed"):
        extra = ["--detailed"] if mode == "detailed" else []
        result = subprocess.run(
            [sys.executable, "-m", "segdemo", "segment", str(out / "cat.jpg"), "--model", "random:b0", "--no-show",
             "--build-dir", str(build_dir), "--out", str(out / mode), *extra],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr
        runs[mode] = json.loads((out / mode / "profiling.json").read_text())
    return runs


def test_segment_writes_valid_trace_with_load_and_inference_spans(cli_trace):
    events = _check_trace_file(cli_trace["plain"])
    names = {e["name"]: e for e in events}
    # One image per process: the request is the warm-up, so the CLI does not run one beforehand.
    assert {"session load", "onnx export", "create ort session"} <= set(names) and "warm-up" not in names
    assert names["create ort session"]["args"]["optimized_cache"] in ("hit", "saved")
    assert {"decode", "resize", "execute", "legend", "colourise", "overlay"} <= set(names)
    assert names["onnx export"]["args"]["cache_hit"] is True
    assert {e["cat"] for e in events} == {LOAD, INFERENCE}
    assert cli_trace["plain"]["otherData"]["random_weights"] is True


def test_detailed_trace_has_onnxruntime_layer_spans(cli_trace):
    events = _check_trace_file(cli_trace["detailed"])
    layers = [e for e in events if e["cat"] == LAYER]
    assert len(layers) > 50
    assert any(e["args"]["op"] == "LayerNormalization" for e in layers)
    (execute,) = [e for e in events if e["name"] == "execute"]
    # Layer spans lie inside the network span they were measured in (aligned clocks), within the execute span;
    # the class map made on the host from the logits follows as a span of its own.
    (network,) = [e for e in events if e["name"] == "network"]
    inside = [e for e in layers if network["ts"] - 1 <= e["ts"] <= network["ts"] + network["dur"] + 1]
    assert len(inside) == len(layers)
    assert execute["ts"] <= network["ts"] and network["ts"] + network["dur"] <= execute["ts"] + execute["dur"] + 1
    (post,) = [e for e in events if e["name"] == "postprocess"]
    assert post["ts"] >= network["ts"] + network["dur"] - 1 and post["args"]["candidate_px"] > 0
    assert not any(e["args"]["op"] in ("Resize", "ArgMax") for e in layers)  # no longer in the graph


def test_problems_catches_broken_traces():
    spans = [Span("outer", LOAD, 0, 100_000, "main"), Span("inner", LOAD, 10_000, 20_000, "main")]
    good = chrome_trace(spans)
    assert problems(good) == []
    crossing = chrome_trace([Span("a", LOAD, 0, 100_000, "main"), Span("b", LOAD, 50_000, 100_000, "main")])
    assert any("without nesting" in p for p in problems(crossing))
    negative = chrome_trace(spans)
    negative["traceEvents"][-1]["dur"] = -1
    assert any("negative" in p for p in problems(negative))
    assert problems({"traceEvents": "nope"}) == ["traceEvents is missing or not a list"]


def test_spans_of_concurrent_requests_never_mix(session_factory):
    session = session_factory("random:tiny")
    sizes = [(64 + 8 * i, 96 + 8 * i) for i in range(6)]
    results = {}

    def work(size):
        results[size] = session.segment(np.full((*size, 3), 100, np.uint8))

    threads = [threading.Thread(target=work, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for size, result in results.items():
        spans = result.spans.spans
        assert [s.attrs["size"] for s in spans if s.name == "resize"] == [list(size)]
        assert len({s.thread for s in spans}) == 1
        assert sum(s.name == "execute" for s in spans) == 1


def test_recorder_is_thread_safe_and_keeps_attributes():
    recorder = SpanRecorder()

    def record(i):
        for _ in range(200):
            with recorder.span(f"s{i}", INFERENCE, worker=i) as attrs:
                attrs["extra"] = True

    threads = [threading.Thread(target=record, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = recorder.spans
    assert len(spans) == 800 and all(s.attrs["extra"] for s in spans)
    assert all(s.duration_ns >= 0 for s in spans)
    assert [s.start_ns for s in spans] == sorted(s.start_ns for s in spans)


def test_device_spans_have_their_own_lane():
    recorder = SpanRecorder()
    recorder.add_device("execute", INFERENCE, time.perf_counter_ns(), 2_000_000, stream=7)
    (span,) = recorder.spans
    assert span.thread == "GPU stream" and span.attrs == {"clock": "device", "stream": 7}
    fig = timeline_figure([], recorder.spans)
    assert fig.data[0].y[0] == "inference · GPU" and fig.data[0].marker.color == COLOURS["device"]


def test_history_summary_percentiles():
    history = RequestHistory(size=3)
    for ms in (10, 20, 30, 40):  # the oldest is dropped
        recorder = SpanRecorder()
        recorder.add(Span("execute", INFERENCE, 0, ms * 1_000_000, "main"))
        recorder.add(Span("conv", LAYER, 0, 1_000, "main"))
        history.append(recorder)
    (row,) = history.summary()  # layer spans are not summarised
    assert row["span"] == "execute" and row["count"] == 3
    assert row["p50_ms"] == 30 and 39 <= row["p95_ms"] <= 40
    assert percentile([5.0], 95) == 5.0
    fig = summary_figure(history.summary())
    assert list(fig.data[0].x) == [30]


def test_timeline_lanes_labels_and_elided_gap():
    ms = 1_000_000
    load = [Span("session load", LOAD, 0, 1000 * ms, "main"), Span("onnx export", LOAD, 10 * ms, 900 * ms, "main")]
    request = [Span("request", INFERENCE, 60_000 * ms, 200 * ms, "worker"),
               Span("execute", INFERENCE, 60_010 * ms, 150 * ms, "worker", {"backend": "onnxruntime"}),
               Span("decode", INFERENCE, 60_001 * ms, 2 * ms, "worker")]
    fig = timeline_figure(load, request)
    by_name = {}
    for trace in fig.data:
        for y, base, x, text, hover in zip(trace.y, trace.base, trace.x, trace.text, trace.hovertext, strict=True):
            by_name[hover.split("</b>")[0].removeprefix("<b>")] = (y, base, x, text, hover)
    assert by_name["session load"][0] == "load" and by_name["onnx export"][0] == "load ›"
    assert by_name["request"][0] == "inference" and by_name["execute"][0] == "inference ›"
    # The minute between load and request is elided: the request is drawn just after the load.
    assert 1000 < by_name["request"][1] < 1100
    assert "59.0 s after the load" in fig.layout.annotations[0].text
    # Wide bars are labelled, narrow ones are left to the hover text.
    assert by_name["session load"][3] == "session load" and by_name["decode"][3] == ""
    assert "150.00 ms" in by_name["execute"][4] and "backend: onnxruntime" in by_name["execute"][4]
    assert {t.marker.color for t in fig.data} == {COLOURS["load"], COLOURS["inference"]}
