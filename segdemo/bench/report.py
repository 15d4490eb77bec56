"""The engine bench's results rendered (results.json, Markdown table and section, a docs file's section, a chart):
functions of the results dict only, so they are testable without running anything."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..optional import missing
from .jobs import REFERENCE

log = logging.getLogger("segdemo")


def results_of(args: Any, smoke: dict[str, Any], measure: Callable[[Any], dict]) -> dict:
    """A bench's results: re-read from --from-json, or measured (--smoke's settings applied to `args` first)."""
    if args.from_json:
        return json.loads(args.from_json.read_text())
    if args.smoke:
        for key, value in smoke.items():
            setattr(args, key, value)
    return measure(args)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95, mean and n of `samples` (ms)."""
    values = np.asarray(samples, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean()), "n": int(values.size)}


def write_outputs(results: dict, out: Path, markdown: Path | None, section: str | None) -> dict[str, Path]:
    """results.json, bench.md and bench.html in `out`; optionally the section of a shared Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "bench.md"}
    files["json"].write_text(json.dumps(results, indent=1) + "\n")
    text = markdown_section(results)
    files["markdown"].write_text(text)
    html = chart_html(results)
    if html is not None:
        files["chart"] = out / "bench.html"
        files["chart"].write_text(html)
    if markdown is not None:
        merge_section(markdown, section or results["meta"]["device"], text)
        files["docs"] = markdown
    return files


def fmt_ms(value: float | None) -> str:
    """A duration in ms as the tables show it: one decimal from 10 ms, two below, '–' for none."""
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown_table(results: dict) -> str:
    """One row per contender and size; the speed-up is the transformers pipeline's e2e p50 over this one's."""
    head = ("| contender | size | e2e p50 ms | e2e p95 ms | model-only p50 ms | throughput img/s (N) | "
            "cold start s | peak host MB | peak device MB | agreement | e2e speed-up | model-only speed-up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    reference = next((r for r in results["runs"] if r["backend"] == REFERENCE and "error" not in r), None)
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"| {run['label']} | – | failed: {' '.join(run['error'])[:80]} |" + " |" * 9)
            continue
        for key, s in run["sizes"].items():
            base = reference["sizes"].get(key) if reference else None
            speedup = base["e2e_ms"]["p50"] / s["e2e_ms"]["p50"] if base else None
            model_speedup = base["model_ms"]["p50"] / s["model_ms"]["p50"] if base else None
            agreement = s.get("agreement")
            device_mb = run.get("peak_device_mb")
            lines.append(
                f"| {run['label']} | {key} | {fmt_ms(s['e2e_ms']['p50'])} | {fmt_ms(s['e2e_ms']['p95'])} | "
                f"{fmt_ms(s['model_ms']['p50'])} | {s['throughput_ips']:.2f} ({s['concurrency']}) | "
                f"{run['cold_start_ms'] / 1e3:.2f} | {run['peak_host_mb']:.0f} | "
                f"{'–' if device_mb is None else f'{device_mb:.0f}'} | "
                f"{'reference' if run is reference else ('–' if agreement is None else f'{agreement:.4%}')} | "
                f"{'1×' if run is reference else ('–' if speedup is None else f'{speedup:.2f}×')} | "
                f"{'1×' if run is reference else ('–' if model_speedup is None else f'{model_speedup:.2f}×')} |"
            )
    return "\n".join(lines) + "\n"


def markdown_section(results: dict) -> str:
    """Heading, meta bullets, the table and where each contender's end-to-end time goes."""
    meta = results["meta"]
    machine = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    hardware = machine["gpu"] or f"{machine['cpu']}, {machine['cores']} cores"
    lines = [
        f"### {meta['model']} on {meta['device']} — {hardware}",
        "",
        f"- date: {meta['date']}; machine: {machine['platform']}; CPU: {machine['cpu']} ({machine['cores']} cores)",
        f"- versions: {versions}",
        f"- {meta['iters']} timed requests per size after {meta['warmup']} warm-ups, {meta['images']} JPEG photos "
        f"cycled; throughput with {meta['concurrency']} concurrent requests; graph `{meta['onnx_file']}`",
        f"- command: `{meta['command']}`",
        "",
        markdown_table(results),
    ]
    stages = [(r["label"], key, s["stages_ms"]) for r in results["runs"] if "error" not in r
              for key, s in r["sizes"].items() if s.get("stages_ms")]
    if stages:
        lines += ["Where the end-to-end time goes (median ms per span):", ""]
        for label, key, spans in stages:
            top = sorted(spans.items(), key=lambda kv: -kv[1])
            lines.append(f"- {label} {key}: " + ", ".join(f"{n} {fmt_ms(v)}" for n, v in top[:9]))
        lines.append("")
    return "\n".join(lines)


def merge_section(path: Path, section: str, text: str) -> None:
    """Replace (or append) the block between this section's markers, keeping every other section."""
    begin, end = f"<!-- segdemo-bench:{section} -->", f"<!-- /segdemo-bench:{section} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    if path.is_file():
        current = path.read_text()
    else:
        current = ("# Benchmarks\n\nGenerated by `python -m segdemo bench` (one section per run; re-run the "
                   "command shown in a section to refresh it, or re-render its results.json with `--from-json`). "
                   "Speed-ups are the transformers pipeline's p50 over the contender's, from the same run.\n\n")
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current)


def chart_html(results: dict) -> str | None:
    """Grouped bars of e2e and model-only p50 per size and contender; None without plotly."""
    why = missing("plotly.graph_objects", "plotly", "the bench.html chart")
    if why:
        log.warning("no chart: %s", why)
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = [r for r in results["runs"] if "error" not in r]
    sizes = results["meta"]["sizes"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("end-to-end p50 (ms)", "model-only p50 (ms)"))
    for run in runs:
        for col, metric in ((1, "e2e_ms"), (2, "model_ms")):
            values = [run["sizes"].get(k, {}).get(metric, {}).get("p50") for k in sizes]
            fig.add_trace(go.Bar(name=run["label"], x=sizes, y=values, legendgroup=run["label"],
                                 showlegend=col == 1, text=[fmt_ms(v) for v in values]), row=1, col=col)
    meta = results["meta"]
    hardware = meta["machine"]["gpu"] or meta["machine"]["cpu"]
    fig.update_layout(barmode="group", title=f"segdemo bench — {meta['model']} on {meta['device']} ({hardware}), "
                                             f"{meta['date']}")
    fig.update_yaxes(type="log")
    buffer = io.StringIO()
    fig.write_html(buffer, include_plotlyjs="cdn", full_html=True)
    return buffer.getvalue()
