"""One request's result: the class map at the original size, the display-size pictures, legend and spans; a video
frame's, for its encoder: the legend and the overlay alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .image.classmap import LegendEntry
from .image.decode import decode
from .image.visuals import DEFAULT_OPACITY, clamp_opacity, class_map_png, colour_mask, overlay, png_bytes
from .profiling.spans import INFERENCE, SpanRecorder


@dataclass
class Segmentation:
    """One request's result: the class map at the original size, the pictures the browser shows at display size,
    and full-size pictures made only when asked for (downloads, the CLI)."""

    class_map: np.ndarray  # uint8 class ids, original (upright) size
    legend: list[LegendEntry]
    colours: np.ndarray
    spans: SpanRecorder
    display_image: np.ndarray  # RGB at display size (the decoded image itself when that is no larger)
    display_map: np.ndarray  # class ids at display size
    info: dict[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, repr=False)  # what the image came from: decoded again only for full size
    _image: np.ndarray | None = field(default=None, repr=False)
    _mask: np.ndarray | None = field(default=None, repr=False)
    _display_overlays: dict[float, np.ndarray] = field(default_factory=dict, repr=False)  # made with the map
    # The display overlay made with the map, as I420 for a video's encoder (Session.segment_frames(i420=True) on a
    # device that makes it; None otherwise).
    overlay_i420: np.ndarray | None = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray:
        """The decoded RGB image at its original size (decoded again on the host if only the device had it)."""
        if self._image is None:
            if self.display_image.shape[:2] == self.class_map.shape:
                self._image = self.display_image
            else:
                with self.spans.span("decode full size", INFERENCE):
                    self._image = decode(self.source)
        return self._image

    @property
    def mask(self) -> np.ndarray:
        """Colour picture of the class map at the original size (computed once, on demand)."""
        if self._mask is None:
            with self.spans.span("colourise", INFERENCE):
                self._mask = colour_mask(self.class_map, self.colours)
        return self._mask

    def overlay(self, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
        """The overlay at the original size (for downloads; the browser shows `display_overlay`)."""
        mask = self.mask
        with self.spans.span("overlay", INFERENCE, opacity=clamp_opacity(opacity)):
            return overlay(self.image, mask, opacity)

    def display_overlay(self, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
        """The overlay at display size; the default opacity's was made along with the class map."""
        opacity = clamp_opacity(opacity)
        if opacity not in self._display_overlays:
            with self.spans.span("display overlay", INFERENCE, opacity=opacity):
                self._display_overlays[opacity] = overlay(self.display_image,
                                                          colour_mask(self.display_map, self.colours), opacity)
        return self._display_overlays[opacity]

    def legend_json(self) -> dict[str, Any]:
        return {**self.info, "classes": [e.to_dict() for e in self.legend]}

    def write(self, out_dir: Path, opacity: float = DEFAULT_OPACITY) -> dict[str, Path]:
        """Write classes.png (palette PNG of ids), overlay.png and legend.json, all at the original size."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "classes": out_dir / "classes.png",
            "overlay": out_dir / "overlay.png",
            "legend": out_dir / "legend.json",
        }
        files["classes"].write_bytes(class_map_png(self.class_map, self.colours))
        files["overlay"].write_bytes(png_bytes(self.overlay(opacity)))
        self.write_legend(files["legend"])
        return files

    def write_legend(self, path: Path) -> Path:
        path.write_text(json.dumps(self.legend_json(), indent=2) + "\n")
        return path


@dataclass
class EncoderFrame:
    """A video frame's result as its encoder and class shares take it: the legend and the display-size overlay, as
    I420 planes where the device made them (nothing else of the frame left the device), else RGB."""

    legend: list[LegendEntry]
    overlay: np.ndarray  # I420: ((height × 3/2) × width) uint8, even sides; RGB: height × width × 3

    @property
    def i420(self) -> bool:
        return self.overlay.ndim == 2

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the overlay."""
        height, width = self.overlay.shape[:2]
        return (height * 2 // 3 if self.i420 else height), width

    @classmethod
    def of(cls, result: Segmentation, opacity: float = DEFAULT_OPACITY) -> EncoderFrame:
        """A full result's legend and overlay (its I420 where the device made it)."""
        overlay = result.overlay_i420 if result.overlay_i420 is not None else result.display_overlay(opacity)
        return cls(result.legend, overlay)
