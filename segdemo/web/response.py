"""What one request answers with in the app: the files (display overlay, class maps, legend, trace) written outside
the engine slot, made again on demand (re-blends, the full-size overlay), and the status line and timings."""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import BadImageError, SegdemoError
from ..image.classmap import LegendEntry
from ..image.decode import decode
from ..image.visuals import clamp_opacity, class_map_png, colour_mask, jpeg_bytes, overlay, png_bytes, read_class_map
from ..pipeline import Segmentation, Session
from ..profiling.spans import INFERENCE, SpanRecorder
from ..profiling.trace import write_trace

EXPIRED = ("this result has expired (a visitor's results are kept for a while after their last request) — "
           "segment the image again")


class ResultExpiredError(SegdemoError):
    """The files a follow-up needs are gone: the visitor's folder aged out or was released."""


def status_line(result: Segmentation | Response) -> str:
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


def timings(result: Segmentation | Response, session: Session) -> dict[str, Any]:
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


_ENCODERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="encode")


@dataclass
class Response:
    """One result as a visitor's session keeps it: its files in the visitor's folder and the few facts shown with
    it — no pixels in memory; re-blends and the full-size overlay are made from the files on demand."""

    folder: Path  # this result's folder inside the visitor's own
    legend: list[LegendEntry]
    info: dict[str, Any]
    spans: SpanRecorder
    colours: np.ndarray  # the session's palette (shared, not copied)
    overlay: Path  # display-size JPEG
    classes: Path  # original-size palette PNG (pixel value = class id)
    source: Path  # the image as it was sent (or its pixels, .npy), for the full-size overlay
    display: Path  # the display-size picture and class map (.npz), for re-blends and the hover view

    def legend_json(self) -> dict[str, Any]:
        return {**self.info, "classes": [e.to_dict() for e in self.legend]}


def respond(result: Segmentation, opacity: float, folder: Path, sent: Any = None) -> Response:
    """Write what the API answers with into `folder`: the display overlay (JPEG), the full-size class map (palette
    PNG) and what later steps are made from — `sent`, the image as the visitor sent it (path, bytes or pixels).
    Runs outside the engine slot: the next request's inference goes on meanwhile."""
    spans = result.spans
    sent = result.source if sent is None else sent
    overlay, classes = folder / "overlay.jpg", folder / "classes.png"
    display, source = folder / "display.npz", _source_path(sent, folder)

    def encode_classes() -> None:
        with spans.span("encode classes.png", INFERENCE, size=list(result.class_map.shape)):
            classes.write_bytes(class_map_png(result.class_map, result.colours))
        with spans.span("keep display pictures", INFERENCE, size=list(result.display_map.shape)):
            np.savez(display, image=result.display_image, classes=result.display_map)
            _keep_source(sent, result, source)

    # The encoders release the GIL: the class map's PNG is written beside the overlay's JPEG, not after it.
    pending = _ENCODERS.submit(encode_classes)
    with spans.span("encode overlay", INFERENCE, size=list(result.display_map.shape)):
        overlay.write_bytes(jpeg_bytes(result.display_overlay(opacity)))
    pending.result()
    return Response(folder, result.legend, result.info, spans, result.colours, overlay, classes, source, display)


def _source_path(source: Any, folder: Path) -> Path:
    return folder / ("source.npy" if isinstance(source, np.ndarray) else "source")


def _keep_source(source: Any, result: Segmentation, path: Path) -> None:
    """The image as sent: a link to the upload where it can be (no copy), else its bytes or pixels."""
    if isinstance(source, (str, Path)):
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
    elif isinstance(source, (bytes, bytearray)):
        path.write_bytes(source)
    else:
        np.save(path, result.image)


def _display(response: Response) -> tuple[np.ndarray, np.ndarray]:
    """The display-size picture and class map kept with the response."""
    try:
        with np.load(response.display) as kept:
            return kept["image"], kept["classes"]
    except OSError:
        raise ResultExpiredError(EXPIRED) from None


def view_file(response: Response) -> Path:
    """The display-size class map as a palette PNG: the browser's view reads each shown pixel's class id from it."""
    view = response.folder / "view.png"
    if not view.is_file():
        _, display_map = _display(response)
        with response.spans.span("encode view.png", INFERENCE, size=list(display_map.shape)):
            _write(view, class_map_png(display_map, response.colours))
    return view


def photo_file(response: Response) -> Path:
    """The display-size photo as a JPEG: what the view shows under hidden classes and beside the overlay."""
    photo = response.folder / "photo.jpg"
    if not photo.is_file():
        image, _ = _display(response)
        with response.spans.span("encode photo.jpg", INFERENCE, size=list(image.shape[:2])):
            _write(photo, jpeg_bytes(image))
    return photo


def _write(path: Path, data: bytes) -> None:
    """Write whole, then rename: a shared result (a cached example) may be read by another visitor meanwhile."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def reblend(response: Response, opacity: float) -> Path:
    """The display overlay at another opacity (no inference), as a JPEG beside the response's other files."""
    opacity = round(clamp_opacity(opacity), 2)
    path = response.folder / f"overlay-{opacity:.2f}.jpg"
    image, display_map = _display(response)
    _write(path, jpeg_bytes(overlay(image, colour_mask(display_map, response.colours), opacity)))
    return path


def full_overlay_file(response: Response, opacity: float) -> Path:
    """overlay.png at the original size, made on demand from the kept image and class map (seconds for 12 MP)."""
    opacity = round(clamp_opacity(opacity), 2)
    path = response.folder / f"overlay-{opacity:.2f}.png"
    if not path.is_file():
        try:
            image = np.load(response.source) if response.source.suffix == ".npy" else decode(response.source)
            class_map = read_class_map(response.classes)
        except (OSError, BadImageError):
            raise ResultExpiredError(EXPIRED) from None
        _write(path, png_bytes(overlay(image, colour_mask(class_map, response.colours), opacity)))
    return path


def legend_file(response: Response) -> Path:
    path = response.folder / "legend.json"
    if not path.is_file():
        _write(path, (json.dumps(response.legend_json(), indent=2) + "\n").encode())
    return path


def trace_file(session: Session, response: Response) -> str:
    """profiling.json (Chrome trace: load spans + this request) for Perfetto / chrome://tracing."""
    return str(write_trace(response.folder / "profiling.json", session.trace_spans(response.spans), response.info))


def file_url(path: Path) -> str:
    """The URL the page loads one of our files from (relative: it works behind a root path or a proxy too)."""
    return "gradio_api/file=" + quote(str(path))
