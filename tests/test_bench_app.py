"""`segdemo bench --app`: image set, figures and report from hand-made numbers; one real smoke run (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from segdemo.bench import app_report as report
from segdemo.bench.images import IMAGES, image_names, make_images
from segdemo.errors import SegdemoError

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SEGDEMO_CHROMIUM", "/usr/bin/chromium")


def test_image_set_sizes_exif_and_formats(tmp_path):
    images = make_images(tmp_path, list(IMAGES), count=2)
    stored = {"512": (512, 512), "1024x768": (1024, 768), "1920x1080": (1920, 1080), "phone12mp": (4032, 3024),
              "png-screenshot": (1920, 1080)}
    for name, size in stored.items():
        info = images[name]
        first, second = (Path(p) for p in info["paths"])
        assert first.read_bytes() != second.read_bytes()  # each request uploads a file of its own
        assert info["size"] == list(size) and info["bytes"] == first.stat().st_size
        for path in (first, second):
            with Image.open(path) as img:
                assert img.size == size and img.format == info["format"] and img.mode == "RGB"
    with Image.open(images["phone12mp"]["paths"][0]) as img:
        assert img.format == "JPEG" and img.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(img).size == (3024, 4032)
    assert images["phone12mp"]["shown"] == [3024, 4032] and images["1920x1080"]["shown"] == [1920, 1080]
    assert Path(images["png-screenshot"]["paths"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(images["512"]["paths"][0]) as img:
        assert 0x0112 not in img.getexif()


def test_image_names_are_checked():
    assert image_names("512, phone12mp", "--app-images") == ["512", "phone12mp"]
    with pytest.raises(SegdemoError, match="4k"):
        image_names("512,4k", "--app-images")


def test_percentiles_ratios_and_overheads():
    s = report.stats([float(v) for v in range(1, 101)])
    assert (s["p50"], s["p95"], s["n"]) == (pytest.approx(50.5), pytest.approx(95.05), 100)
    assert report.stats([]) == {"n": 0}
    assert report.ratio_and_beyond(100.0, 450.0, 300.0) == (4.5, 50.0)
    assert report.presentation_overhead(420.0, 70.0, 310.0) == pytest.approx(40.0)
    # a span missing from a request counts 0 there; largest median first
    assert report.span_medians([{"a": 1, "b": 5}, {"a": 3}, {"a": 2, "b": 7}]) == {"b": 5.0, "a": 2.0}
    assert report.status_ms("onnxruntime (cpu, fp32) · 1024×768 px · 469 ms · 38 classes · ⚠️ random") == 469.0
    assert report.status_ms(None) is None and report.status_ms("no time here") is None


def _results() -> dict:
    stats = report.stats
    mode = {"overlay_ms": stats([380.0, 390.0, 400.0]), "all_ms": stats([500.0, 510.0, 520.0]), "same_src": 0,
            "raw": []}
    return {
        "meta": {"date": "2026-01-01 00:00 UTC", "model": "random:tiny", "backend": "auto", "device": "cpu",
                 "served_by": {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"},
                 "iters": 3, "warmup": 1, "browser_iters": 3, "ready_s": {"floor": 5.0, "app": 9.0},
                 "machine": {"platform": "Linux", "cpu": "Test CPU", "cores": 2, "gpu": None},
                 "versions": {"python": "3.11", "gradio": "6"}, "command": "python -m segdemo bench --app",
                 "app_command": "python app.py --model random:tiny --backend auto --port PORT",
                 "browser_method": "test"},
        "images": {"512": {"size": [512, 512], "shown": [512, 512], "bytes": 68_052, "format": "JPEG"},
                   "phone12mp": {"size": [4032, 3024], "shown": [3024, 4032], "bytes": 3_400_000, "format": "JPEG"}},
        "api": {"512": {"floor_ms": stats([100.0, 110.0, 120.0]), "app_ms": stats([400.0, 420.0, 450.0]),
                        "session_ms": stats([250.0, 260.0, 270.0]), "spans_ms": {"request": 260.0, "execute": 230.0},
                        "raw": {}},
                "phone12mp": {"error": "AppError: too big"}},
        "browser": {"skipped": None, "images": {"512": {
            "floor": {"painted_ms": stats([70.0, 75.0, 80.0]), "raw": []},
            "modes": {"Profiling never opened": {**mode, "session_ms": stats([300.0, 310.0]),
                                                 "src_set_ms": stats([340.0]), "fetched_ms": stats([370.0]),
                                                 "timeline": "timeline not in the DOM"},
                      "Profiling opened once": {**mode, "session_ms": stats([]),
                                                "timeline": "timeline hidden, its DOM update counted"}}}}},
    }


def test_report_tables_json_and_docs_section(tmp_path):
    results = report.derive(_results())
    api = results["api"]["512"]
    assert api["ratio_to_floor"] == pytest.approx(420 / 110) and api["beyond_ms"] == pytest.approx(50.0)
    modes = results["browser"]["images"]["512"]["modes"]
    assert modes["Profiling never opened"]["presentation_overhead_ms"] == pytest.approx(390 - 75 - 305)
    # no status line read: the API's session time for the same image stands in, and the table says so
    assert modes["Profiling opened once"]["presentation_overhead_ms"] == pytest.approx(390 - 75 - 260)
    assert modes["Profiling opened once"]["session_source"] == "API"

    doc = tmp_path / "docs" / "benchmarks.md"
    files = report.write_outputs(results, tmp_path / "out", doc, None)
    assert json.loads(files["json"].read_text()) == results
    text = files["markdown"].read_text()
    assert text.startswith("### App: random:tiny on cpu (onnxruntime, fp32) — Test CPU, 2 cores")
    assert "| 512 | 512x512 | 68 kB | 110.0 | 119.0 | 420.0 | 447.0 | 260.0 | 3.8× | 50.0 |" in text
    assert "| phone12mp | 4032x3024 (shown 3024x4032) | 3.40 MB | failed: AppError: too big |" in text
    assert "- 512: request 260.0, execute 230.0" in text
    assert "| 512 | Profiling never opened: timeline not in the DOM | 75.0 / 79.5 | 390.0 / 399.0 | " \
           "510.0 / 519.0 | 305.0 | 10.0 (≤ 50) |" in text
    assert "| 260.0 (API) | 55.0 (> 50) |" in text
    assert "- 512, Profiling never opened: response rendered (new overlay src) 340.0, overlay fetched 370.0, " \
           "painted 390.0" in text
    assert "<!-- segdemo-bench:app-cpu -->" in doc.read_text() and text.strip() in doc.read_text()
    assert report.api_table(results) in report.tables_text(results)

    results["browser"] = {"skipped": "--no-browser"}
    assert "Browser timing skipped: --no-browser" in report.markdown_section(results)


def test_app_options_and_lazy_import():
    from segdemo.cli import parser

    args = parser().parse_args(["bench", "--app", "--no-browser", "--app-images", "512"])
    assert args.app and not args.browser and args.backend == "auto" and args.app_images == "512"
    assert args.browser_images == "1024x768" and args.browser_iters is None
    assert not parser().parse_args(["bench"]).app
    probe = ("import sys, segdemo.cli; segdemo.cli.parser(); "
             "print(sorted(m for m in sys.modules if m.startswith('segdemo.bench')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr  # the benchmarks load when `bench` runs, `--app` only then


@pytest.mark.slow
def test_smoke_run_measures_floor_app_and_browser(tmp_path, build_dir):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "segdemo", "bench", "--app", "--smoke", "--out", str(out),
         "--build-dir", str(build_dir)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results-app.json").read_text())
    assert {"date", "model", "device", "machine", "versions", "command", "app_command"} <= set(results["meta"])
    assert results["meta"]["model"] == "random:tiny" and results["meta"]["device"] == "cpu"
    api = results["api"]["512"]
    for key in ("floor_ms", "app_ms", "session_ms"):
        assert api[key]["n"] == 2 and 0 < api[key]["p50"] <= api[key]["p95"], (key, api[key])
    assert api["ratio_to_floor"] > 0 and api["spans_ms"]
    browser = results["browser"]
    if shutil.which(CHROMIUM) and importlib.util.find_spec("playwright"):
        assert browser["skipped"] is None, browser
        entry = browser["images"]["512"]
        assert entry["floor"]["painted_ms"]["n"] == 2 and entry["floor"]["painted_ms"]["p50"] > 0
        for mode in entry["modes"].values():
            assert 0 < mode["overlay_ms"]["p50"] <= mode["all_ms"]["p50"]
    else:
        assert browser["skipped"]
    assert "| image | size | bytes |" in (out / "bench-app.md").read_text()
    assert "API round trip" in result.stdout
