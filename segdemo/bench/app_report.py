"""Numbers and files of `segdemo bench --app`: derived figures, results-app.json, bench-app.md, the docs section."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .report import fmt_ms, merge_section, percentiles

TARGET_OVERHEAD_MS = 50.0  # what the page may add on top of the floor and the session's own time


def stats(samples: list[float]) -> dict[str, float]:
    """p50, p95, mean and n of `samples` (ms); just n = 0 when there are none."""
    return percentiles(samples) if samples else {"n": 0}


def ratio_and_beyond(floor_p50: float, app_p50: float, session_p50: float) -> tuple[float, float]:
    """(app round trip / floor round trip, app round trip − session time − floor round trip) from p50s in ms."""
    return app_p50 / floor_p50, app_p50 - session_p50 - floor_p50


def presentation_overhead(app_overlay_p50: float, floor_painted_p50: float, session_p50: float) -> float:
    """What the app's page adds to click → overlay painted beyond the floor's click → painted and the session."""
    return app_overlay_p50 - floor_painted_p50 - session_p50


def span_medians(requests: list[dict[str, float]]) -> dict[str, float]:
    """Median ms of each span over requests (a span missing from a request counts 0), largest first."""
    names = {name for spans in requests for name in spans}
    medians = {n: stats([s.get(n, 0.0) for s in requests])["p50"] for n in names}
    return dict(sorted(medians.items(), key=lambda kv: -kv[1]))


def status_ms(text: str | None) -> float | None:
    """The inference time in the app's status line ('… · 1024×768 px · 469 ms · 38 classes'), or None."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*ms\b", text or "")
    return float(match.group(1)) if match else None


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Add the ratio/overhead figures next to the raw numbers (in place; returns `results`)."""
    for entry in results.get("api", {}).values():
        if "error" not in entry:
            entry["ratio_to_floor"], entry["beyond_ms"] = ratio_and_beyond(
                entry["floor_ms"]["p50"], entry["app_ms"]["p50"], entry["session_ms"]["p50"])
    for name, entry in results.get("browser", {}).get("images", {}).items():
        for mode in entry.get("modes", {}).values():
            session = mode["session_ms"].get("p50")
            if session is None:  # no status line to read: the API's session time for the same image
                session = results.get("api", {}).get(name, {}).get("session_ms", {}).get("p50")
                mode["session_source"] = "API" if session is not None else None
            mode["presentation_overhead_ms"] = None if session is None else presentation_overhead(
                mode["overlay_ms"]["p50"], entry["floor"]["painted_ms"]["p50"], session)
            mode["session_p50_used"] = session
    return results


def _size(info: dict[str, Any]) -> str:
    size = "x".join(map(str, info["size"]))
    return size if info["shown"] == info["size"] else f"{size} (shown {'x'.join(map(str, info['shown']))})"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _p(s: dict[str, float], key: str) -> str:
    return fmt_ms(s.get(key))


def api_table(results: dict[str, Any]) -> str:
    """Round trip of gradio_client's predict per image: floor, app, the session's own time, derived figures."""
    head = ("| image | size | bytes | floor p50 ms | floor p95 ms | app p50 ms | app p95 ms | session p50 ms | "
            "app / floor | beyond session + floor ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, entry in results["api"].items():
        info = results["images"][name]
        if "error" in entry:
            lines.append(f"| {name} | {_size(info)} | {_bytes(info['bytes'])} | failed: {entry['error'][:80]} |"
                         + " |" * 6)
            continue
        lines.append(
            f"| {name} | {_size(info)} | {_bytes(info['bytes'])} | {_p(entry['floor_ms'], 'p50')} | "
            f"{_p(entry['floor_ms'], 'p95')} | {_p(entry['app_ms'], 'p50')} | {_p(entry['app_ms'], 'p95')} | "
            f"{_p(entry['session_ms'], 'p50')} | {entry['ratio_to_floor']:.1f}× | {fmt_ms(entry['beyond_ms'])} |")
    return "\n".join(lines) + "\n"


def span_lines(results: dict[str, Any], top: int = 8) -> list[str]:
    """One line per image: the largest server-side spans (median ms)."""
    return [f"- {name}: " + ", ".join(f"{span} {fmt_ms(v)}" for span, v in list(entry["spans_ms"].items())[:top])
            for name, entry in results["api"].items() if entry.get("spans_ms")]


def browser_table(results: dict[str, Any]) -> str:
    """Click → painted by the page's clock: floor, app overlay, app everything, and the presentation overhead."""
    browser = results.get("browser", {})
    if browser.get("skipped"):
        return f"Browser timing skipped: {browser['skipped']}\n"
    head = ("| image | app page | floor click→painted p50 / p95 ms | app click→overlay p50 / p95 ms | "
            "app click→everything p50 / p95 ms | session p50 ms | presentation overhead ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, entry in browser.get("images", {}).items():
        floor = entry["floor"]["painted_ms"]
        for label, mode in entry["modes"].items():
            overhead = mode.get("presentation_overhead_ms")
            verdict = "–" if overhead is None else \
                f"{fmt_ms(overhead)} ({'≤' if overhead <= TARGET_OVERHEAD_MS else '>'} {TARGET_OVERHEAD_MS:.0f})"
            lines.append(
                f"| {name} | {label}: {mode['timeline']} | {_p(floor, 'p50')} / {_p(floor, 'p95')} | "
                f"{_p(mode['overlay_ms'], 'p50')} / {_p(mode['overlay_ms'], 'p95')} | "
                f"{_p(mode['all_ms'], 'p50')} / {_p(mode['all_ms'], 'p95')} | "
                f"{fmt_ms(mode.get('session_p50_used'))}{' (API)' if mode.get('session_source') == 'API' else ''} | "
                f"{verdict} |")
    lines.append("")
    for name, entry in browser.get("images", {}).items():  # where the click → overlay time goes, p50 ms
        for label, mode in entry["modes"].items():
            if mode.get("src_set_ms", {}).get("n"):
                lines.append(f"- {name}, {label}: response rendered (new overlay src) {_p(mode['src_set_ms'], 'p50')}"
                             f", overlay fetched {_p(mode['fetched_ms'], 'p50')}, painted "
                             f"{_p(mode['overlay_ms'], 'p50')}")
    return "\n".join(lines) + "\n"


def tables_text(results: dict[str, Any]) -> str:
    """The tables as printed at the end of a run."""
    parts = ["API round trip (gradio_client predict):", "", api_table(results),
             "Server-side spans (median ms):", "", *span_lines(results), "",
             "Browser (Chromium, page clock):", "", browser_table(results)]
    return "\n".join(parts)


def markdown_section(results: dict[str, Any]) -> str:
    """Heading, meta bullets, the API table, the top spans per image and the browser table."""
    meta, machine = results["meta"], results["meta"]["machine"]
    served = meta.get("served_by", {})
    hardware = machine.get("gpu") or f"{machine['cpu']}, {machine['cores']} cores"
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        f"### App: {meta['model']} on {meta['device']} ({served.get('backend', meta['backend'])}, "
        f"{served.get('precision', '?')}) — {hardware}",
        "",
        f"- date: {meta['date']}; machine: {machine['platform']}; CPU: {machine['cpu']} ({machine['cores']} cores)"
        f"; GPU: {machine.get('gpu') or 'none'}",
        f"- versions: {versions}",
        f"- {meta['iters']} timed requests per image after {meta['warmup']} warm-ups, each a different file (a "
        f"16-px corner patch); floor: a do-nothing Gradio app (gr.Image filepath in → the same file out, "
        f"queue(max_size=16)); app: `{meta['app_command']}`; both on 127.0.0.1, same gradio_client code",
        f"- browser: {meta.get('browser_method', '–')}",
        f"- command: `{meta['command']}`",
        "",
        "API round trip (`client.predict(handle_file(path), …, api_name=\"/segment\")`, ms; session = the app's "
        "own `infer_ms`; beyond = round trip − session − floor):",
        "",
        api_table(results),
        "Where the server-side time goes (median ms per span of `timings.spans_ms`):",
        "",
        *span_lines(results),
        "",
        f"Browser (Chromium, `performance.now()` in the page; presentation overhead = app click→overlay − floor "
        f"click→painted − session, target ≤ {TARGET_OVERHEAD_MS:.0f} ms):",
        "",
        browser_table(results),
    ]
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], out: Path, markdown: Path | None, section: str | None) -> dict[str, Path]:
    """results-app.json and bench-app.md in `out`; optionally the section (default app-<device>) of a docs file."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results-app.json", "markdown": out / "bench-app.md"}
    files["json"].write_text(json.dumps(results, indent=1) + "\n")
    text = markdown_section(results)
    files["markdown"].write_text(text)
    if markdown is not None:
        merge_section(markdown, section or f"app-{results['meta']['device']}", text)
        files["docs"] = markdown
    return files
