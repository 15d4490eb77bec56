"""What one request answers with in the app: the files (display overlay, class maps, legend, trace) written outside
the engine slot, and the markup and values the page shows (status line, legend table, hover view, timings)."""

from __future__ import annotations

import html
import json
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .pipeline import Segmentation, Session
from .spans import INFERENCE
from .trace import write_trace
from .visuals import clamp_opacity, class_map_png, jpeg_bytes, png_bytes


def status_line(result: Segmentation) -> str:
    """Backend, precision, size, time — and the random-weights notice where it applies."""
    info = result.info
    height, width = info["image_size"]
    line = (f"**{info['backend']}** ({info['device']}, {info['precision']}) · {width}×{height} px · "
            f"{info['infer_ms']:.0f} ms · {len(result.legend)} classes")
    shown_height, shown_width = info["display_size"]
    if (shown_height, shown_width) != (height, width):
        line += f" · shown at {shown_width}×{shown_height} (downloads are full size)"
    if info.get("random_weights"):
        line += " · ⚠️ random weights: masks are meaningless"
    return line


def legend_html(result: Segmentation, limit: int = 40) -> str:
    """Swatch, name and share of each class present, largest first."""
    rows = []
    for entry in result.legend[:limit]:
        rows.append(
            f"<tr><td><span style='display:inline-block;width:1.1em;height:1.1em;border-radius:3px;"
            f"background:{entry.color};vertical-align:middle'></span></td>"
            f"<td>{html.escape(entry.name)}</td><td style='text-align:right'>{entry.share * 100:.1f} %</td></tr>"
        )
    more = len(result.legend) - limit
    tail = f"<tr><td></td><td colspan=2><i>… and {more} smaller classes</i></td></tr>" if more > 0 else ""
    return (f"<table class='segdemo-legend'><thead><tr><th></th><th>class</th><th>share</th></tr></thead>"
            f"<tbody>{''.join(rows)}{tail}</tbody></table>")


def timings(result: Segmentation, session: Session) -> dict[str, Any]:
    """Plain timing values for API clients: init, this request, and each of its spans (ms)."""
    return {
        "init_ms": round(session.init_ms, 2),
        "infer_ms": result.info["infer_ms"],
        "spans_ms": {name: round(ms, 3) for name, ms in result.spans.durations_ms().items()},
        "backend": result.info["backend"],
        "precision": result.info["precision"],
    }


SUMMARY_COLUMNS = ("span", "category", "clock", "count", "p50_ms", "p95_ms")


def summary_rows(summary: list[dict[str, Any]]) -> list[list[Any]]:
    """The per-span summary as table rows in SUMMARY_COLUMNS order."""
    return [[row[c] for c in SUMMARY_COLUMNS] for row in summary]


DOWNLOADS = Path(tempfile.mkdtemp(prefix="segdemo-app-"))  # served to the browser: launch(allowed_paths=…)
KEEP_FOLDERS = 256  # Gradio copies each returned file into its own cache, so only recent folders are kept here


_PRUNE_LOCK = threading.Lock()  # requests and re-blends run concurrently; one prunes at a time


def _fresh_folder() -> Path:
    """A new folder for one response's files; the oldest beyond KEEP_FOLDERS are removed."""
    import shutil

    folder = Path(tempfile.mkdtemp(dir=DOWNLOADS))
    with _PRUNE_LOCK:
        old = sorted(DOWNLOADS.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_FOLDERS]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
    return folder


_ENCODERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="encode")


@dataclass
class Response:
    """One request's files: what the API returns at once, and what the page's follow-up step adds."""

    result: Segmentation
    folder: Path
    overlay: Path  # display-size JPEG
    classes: Path  # original-size palette PNG (pixel value = class id)
    view: Path | None = None  # display-size palette PNG: the colour mask, and the hover view's class ids


def respond(result: Segmentation, opacity: float) -> Response:
    """Encode what the API answers with: the display overlay (JPEG) and the full-size class map (palette PNG).

    Runs outside the engine slot: the next request's inference goes on meanwhile (see the spans).
    """
    folder = _fresh_folder()
    spans = result.spans
    overlay, classes = folder / "overlay.jpg", folder / "classes.png"

    def encode_classes() -> None:
        with spans.span("encode classes.png", INFERENCE, size=list(result.class_map.shape)):
            classes.write_bytes(class_map_png(result.class_map, result.colours))

    # The two encoders release the GIL: the class map's PNG is written beside the overlay's JPEG, not after it.
    pending = _ENCODERS.submit(encode_classes)
    with spans.span("encode overlay", INFERENCE, size=list(result.display_map.shape)):
        overlay.write_bytes(jpeg_bytes(result.display_overlay(opacity)))
    pending.result()
    return Response(result, folder, overlay, classes)


def view_file(response: Response) -> Path:
    """The display-size class map as a palette PNG (shown as the colour mask; the hover view reads its ids)."""
    if response.view is None:
        result = response.result
        with result.spans.span("encode view.png", INFERENCE, size=list(result.display_map.shape)):
            response.view = response.folder / "view.png"
            response.view.write_bytes(class_map_png(result.display_map, result.colours))
    return response.view


def reblend(response: Response, opacity: float) -> Path:
    """The display overlay at another opacity (no inference), as a new JPEG file."""
    path = _fresh_folder() / "overlay.jpg"
    path.write_bytes(jpeg_bytes(response.result.display_overlay(opacity)))
    return path


def full_overlay_file(response: Response, opacity: float) -> Path:
    """overlay.png at the original size (made on demand: a 12 MP photo's takes seconds to encode)."""
    path = response.folder / f"overlay-{clamp_opacity(opacity):.2f}.png"
    if not path.is_file():
        path.write_bytes(png_bytes(response.result.overlay(opacity)))
    return path


def legend_file(response: Response) -> Path:
    return response.result.write_legend(response.folder / "legend.json")


def trace_file(session: Session, result: Segmentation, folder: Path) -> str:
    """profiling.json (Chrome trace: load spans + this request) for Perfetto / chrome://tracing."""
    return str(write_trace(folder / "profiling.json", session.trace_spans(result.spans), result.info))


def file_url(path: Path) -> str:
    """The URL the page loads one of our files from (relative: it works behind a root path or a proxy too)."""
    return "gradio_api/file=" + quote(str(path))


def hover_html(response: Response, overlay: Path | None = None, limit: int = 40) -> str:
    """The hover view: the display overlay and the class map its script reads ids from, with class chips.

    One PNG of ids for every class: the browser highlights the class under the pointer itself, so no picture is
    encoded per class.
    """
    result = response.result
    entries = result.legend[:limit]
    table = [[e.id, *(int(e.color[k:k + 2], 16) for k in (1, 3, 5)), e.name, round(e.share * 100, 1)]
             for e in entries]
    chips = "".join(
        f"<span class='chip' data-id='{e.id}'><i style='background:{e.color}'></i>{html.escape(e.name)} "
        f"{e.share * 100:.1f} %</span>" for e in entries)
    height, width = result.display_map.shape
    return (f"<div class='segdemo-hover' data-classes='{html.escape(file_url(view_file(response)))}' "
            f"data-legend='{html.escape(json.dumps(table))}'>"
            f"<div class='stage'><img class='photo' alt='overlay' width='{width}' height='{height}' "
            f"src='{html.escape(file_url(overlay or response.overlay))}'><canvas class='shade'></canvas>"
            f"<div class='tip'></div></div><div class='chips'>{chips}</div></div>")
