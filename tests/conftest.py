"""Shared fixtures: real models with random weights, real ONNX Runtime sessions, real photos."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def session_factory(build_dir):
    from segdemo.pipeline import Session

    cache: dict[str, Session] = {}

    def get(spec: str):
        if spec not in cache:
            cache[spec] = Session(spec, "onnxruntime", build=build_dir)
        return cache[spec]

    yield get
    for session in cache.values():
        session.close()


@pytest.fixture(scope="session")
def reference_factory(session_factory):
    from segdemo.reference import TransformersPipeline

    cache = {}

    def get(spec: str):
        if spec not in cache:
            cache[spec] = TransformersPipeline(session_factory(spec).source)
        return cache[spec]

    return get


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real photograph shipped with scikit-image, optionally resized to (height, width)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if size is not None:
        mode = "L" if image.ndim == 2 else "RGB"
        image = np.asarray(Image.fromarray(image, mode).resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return image


@pytest.fixture()
def photo_file(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo("coffee")).save(path, quality=92)
    return path
