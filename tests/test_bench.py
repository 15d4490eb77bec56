"""`segdemo bench --smoke`: the output format only (benchmarks are a command; timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from segdemo.bench.engine import parse_sizes
from segdemo.bench.report import markdown_section, markdown_table, merge_section


def test_smoke_run_writes_json_markdown_and_chart(tmp_path, build_dir):
    out, doc = tmp_path / "bench", tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--smoke", "--out", str(out), "--build-dir", str(build_dir),
         "--markdown", str(doc), "--section", "ci"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"date", "model", "device", "machine", "versions", "sizes", "command"} <= set(results["meta"])
    labels = [run["label"] for run in results["runs"]]
    assert labels[0] == "transformers" and "onnxruntime (fp32)" in labels
    for run in results["runs"]:
        assert "error" not in run, run
        assert run["cold_start_ms"] > 0 and run["peak_host_mb"] > 0
        stats = run["sizes"]["64x48"]
        for metric in ("e2e_ms", "model_ms"):
            assert stats[metric]["n"] == 3 and 0 < stats[metric]["p50"] <= stats[metric]["p95"]
        assert stats["throughput_ips"] > 0 and stats["concurrency"] == 2
    onnxruntime = next(r for r in results["runs"] if r["backend"] == "onnxruntime")
    assert 0.999 <= onnxruntime["sizes"]["64x48"]["agreement"] <= 1.0
    assert "stages_ms" in onnxruntime["sizes"]["64x48"] and onnxruntime["load_spans_ms"]
    table = (out / "bench.md").read_text()
    assert "| contender | size | e2e p50 ms |" in table and "| onnxruntime (fp32) | 64x48 |" in table
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "<!-- segdemo-bench:ci -->" in text
    chart = out / "bench.html"
    assert not chart.exists() or "plotly" in chart.read_text().lower()


def test_sections_are_replaced_not_duplicated(tmp_path):
    doc = tmp_path / "b.md"
    merge_section(doc, "cpu", "first cpu\n")
    merge_section(doc, "h100", "gpu\n")
    merge_section(doc, "cpu", "second cpu\n")
    text = doc.read_text()
    assert text.count("<!-- segdemo-bench:cpu -->") == 1 and "second cpu" in text and "first cpu" not in text
    assert text.index("second cpu") < text.index("gpu\n")


def _results() -> dict:
    def size(e2e: float, model: float, **extra) -> dict:
        return {"e2e_ms": {"p50": e2e, "p95": e2e * 1.5, "mean": e2e, "n": 3},
                "model_ms": {"p50": model, "p95": model, "mean": model, "n": 3},
                "throughput_ips": 12.5, "concurrency": 2, **extra}

    return {
        "meta": {"date": "2026-01-01 00:00 UTC", "model": "random:tiny", "device": "cpu", "sizes": ["64x48"],
                 "iters": 3, "warmup": 1, "concurrency": 2, "images": 1, "onnx_file": "tiny.onnx",
                 "machine": {"platform": "Linux", "cpu": "Test CPU", "cores": 2, "gpu": None},
                 "versions": {"python": "3.11", "onnxruntime": "1.20"}, "command": "python -m segdemo bench --smoke"},
        "runs": [
            {"backend": "transformers", "precision": "fp32", "label": "transformers", "cold_start_ms": 2500.0,
             "peak_host_mb": 700.4, "peak_device_mb": None, "sizes": {"64x48": size(40.0, 30.0, stages_ms={})}},
            {"backend": "onnxruntime", "precision": "fp32", "label": "onnxruntime (fp32)", "cold_start_ms": 800.0,
             "peak_host_mb": 300.0, "peak_device_mb": None,
             "sizes": {"64x48": size(8.0, 5.0, agreement=0.99995, stages_ms={"run": 4.0, "decode": 0.5})}},
            {"backend": "torch-cuda", "precision": "fp16", "label": "torch-cuda (fp16)",
             "error": ["segdemo: error: no GPU"]},
        ],
    }


def test_report_renders_a_results_dict(tmp_path):
    results = _results()
    table = markdown_table(results)
    assert table.startswith("| contender | size | e2e p50 ms |")
    assert "| transformers | 64x48 | 40.0 | 60.0 | 30.0 | 12.50 (2) | 2.50 | 700 | – | reference | 1× | 1× |" in table
    assert "| onnxruntime (fp32) | 64x48 | 8.00 | 12.0 | 5.00 | 12.50 (2) | 0.80 | 300 | – | 99.9950% | 5.00× | " \
           "6.00× |" in table
    assert "| torch-cuda (fp16) | – | failed: segdemo: error: no GPU |" in table
    section = markdown_section(results)
    assert section.startswith("### random:tiny on cpu — Test CPU, 2 cores")
    assert "- command: `python -m segdemo bench --smoke`" in section and table in section
    assert "- onnxruntime (fp32) 64x48: run 4.00, decode 0.50" in section
    doc = tmp_path / "docs" / "benchmarks.md"
    merge_section(doc, "cpu", section)
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and f"<!-- segdemo-bench:cpu -->\n{section.rstrip()}\n" in text


def test_sizes_are_width_by_height():
    assert parse_sizes("1024x768,512×512") == [(1024, 768), (512, 512)]


def test_cuda_without_a_gpu_is_one_line():
    from segdemo.backends.torch_cuda import unavailable_reason

    if unavailable_reason() is None:
        return  # a GPU machine runs the real thing
    result = subprocess.run([sys.executable, "-m", "segdemo", "bench", "--device", "cuda", "--sizes", "64x48"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--device cpu" in result.stderr


def test_live_and_video_smoke_run_writes_json_and_markdown(tmp_path, build_dir):
    import pytest

    pytest.importorskip("av")
    out, doc = tmp_path / "bench", tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--live", "--video", "--smoke", "--out", str(out),
         "--build-dir", str(build_dir), "--markdown", str(doc)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results-live.json").read_text())
    camera, back_to_back = results["live"]
    assert camera["mode"] == "camera at 10 fps" and back_to_back["mode"] == "back to back"
    for run in (camera, back_to_back):
        assert run["delivered"] > 0 and run["fps"] > 0 and run["latency_ms"]["p50"] <= run["latency_ms"]["p95"]
        assert run["delivered"] + run["replaced"] <= run["offered"]
    video = results["video"]
    assert video["frames"] == 5 and video["speed_vs_real_time"] > 0
    assert video["cli"]["seconds"] > video["cli"]["job_seconds"] > 0  # the command line, start to exit
    text = doc.read_text()
    assert "<!-- segdemo-bench:live-cpu -->" in text and "× real time" in text and "latency p95 ms" in text
    rerendered = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--live", "--from-json", str(out / "results-live.json"),
         "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=120)
    assert rerendered.returncode == 0 and (tmp_path / "again" / "bench-live.md").read_text() == \
        (out / "bench-live.md").read_text()


def test_video_bench_times_a_given_clip_in_process_and_through_the_command_line(tmp_path, build_dir):
    import pytest

    pytest.importorskip("av")
    from segdemo.bench.clips import make_clip

    clip = make_clip(tmp_path / "given.mp4", 160, 120, 0.6, fps=10)
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--video", "--smoke", "--clip", str(clip), "--out", str(out),
         "--build-dir", str(build_dir)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results-live.json").read_text())
    video = results["video"]
    assert "live" not in results and video["clip"] == str(clip) and video["frames"] == 6
    assert video["cli"]["seconds"] > video["cli"]["job_seconds"] > 0 and "segment " + str(clip) in \
        video["cli"]["command"]
    text = (out / "bench-live.md").read_text()
    assert "given.mp4" in text and "end to end (process start → exit)" in text
