"""The Segment tab's example photographs and their results, shared by every visitor who clicks one (made once, on
the first click; Gradio caches what the API answers for them, this keeps what the follow-ups need)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import resolve_build_dir
from ..pipeline import Session
from .response import Response, respond

# scikit-image's bundled photographs (BSD-3-Clause; see its data/README): a desk, a cat, a launch pad, a person
EXAMPLE_PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")
EXAMPLE_OPACITY = 0.5  # the opacity slider's default: cached examples answer at it


def example_files(folder: Path | None = None) -> list[str]:
    """Example photographs (from scikit-image's bundled data) written once as JPEG files."""
    from PIL import Image
    from skimage import data

    target = resolve_build_dir(folder) / "examples"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOS:
        path = target / f"{name}.jpg"
        if not path.is_file():  # written whole, then renamed: copies of the app (--front-ends) start together
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            Image.fromarray(getattr(data, name)()).save(partial, format="JPEG", quality=92)
            os.replace(partial, path)
        paths.append(str(path))
    return paths


def examples_cache_folder(build_dir: Path | None, *facts: object) -> Path:
    """Where Gradio keeps the cached answers for the examples: one folder per model set-up, so a restart with
    another model never shows the old one's results."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(str(f) for f in facts if f is not None)).strip("_")
    return resolve_build_dir(build_dir) / "examples-cache" / (key or "default")


@dataclass
class ExampleResults:
    """Results of the example photographs, made once and read by every visitor (their files are written whole)."""

    _results: dict[str, Response] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, session: Session, path: str, folder: Path) -> Response:
        """The example's result: kept, or segmented now into `folder` (one at a time; a second click waits)."""
        with self._lock:
            kept = self._results.get(path)
            if kept is not None and kept.display.is_file():
                return kept
            out = folder / Path(path).stem
            out.mkdir(parents=True, exist_ok=True)
            result = session.segment(path)
            response = respond(result, EXAMPLE_OPACITY, out)
            self._results[path] = response
            return response
