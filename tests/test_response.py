"""What a request answers with: display-size pictures made fast, full-size downloads exact, encoding off the engine."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from segdemo.image.classmap import restore_size
from segdemo.image.preprocess import resize_for_model
from segdemo.image.visuals import colour_mask, jpeg_bytes, overlay, read_class_map
from segdemo.web import response, view

from .conftest import photo


@pytest.fixture(scope="module")
def small_display(build_dir):
    from segdemo.pipeline import Session

    session = Session("random:tiny", "onnxruntime", build_dir=build_dir, display_side=320)
    yield session
    session.close()


def test_display_pictures_are_made_at_display_size(small_display):
    image = photo("chelsea", (600, 800))
    result = small_display.segment(image)
    assert result.class_map.shape == (600, 800) and result.info["display_size"] == [240, 320]
    assert result.display_map.shape == (240, 320)
    assert np.array_equal(result.display_image, resize_for_model(image, (240, 320)))  # Pillow's bilinear
    assert np.array_equal(result.display_map, restore_size(result.class_map, (240, 320)))  # no downscale: one map
    expected = overlay(result.display_image, colour_mask(result.display_map, result.colours), 0.3)
    assert np.array_equal(result.display_overlay(0.3), expected)
    # Full-size pictures stay exact and come from the original pixels.
    assert np.array_equal(result.overlay(0.5), overlay(image, colour_mask(result.class_map, result.colours), 0.5))


def test_small_images_are_shown_as_they_are(session_factory):
    image = photo("coffee", (120, 160))
    result = session_factory("random:tiny").segment(image)
    assert result.display_image is image or np.array_equal(result.display_image, image)
    assert np.array_equal(result.display_map, result.class_map)


def test_response_files_have_the_right_sizes(small_display, tmp_path):
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800×600, upright 600×800
    Image.fromarray(photo("coffee", (600, 800))).save(path, quality=90, exif=exif.tobytes())
    result = small_display.segment(path)
    answer = response.respond(result, 0.5, tmp_path, sent=path)
    with Image.open(answer.overlay) as shown:
        assert (shown.format, shown.size) == ("JPEG", (240, 320))
    classes = read_class_map(answer.classes)
    assert classes.shape == (800, 600) and np.array_equal(classes, result.class_map)
    shown_map = read_class_map(response.view_file(answer))
    assert np.array_equal(shown_map, result.display_map)
    with Image.open(response.full_overlay_file(answer, 0.5)) as full:
        assert (full.format, full.size) == ("PNG", (600, 800))
    with Image.open(response.photo_file(answer)) as shown_photo:  # what the view shows under hidden classes
        assert (shown_photo.format, shown_photo.size) == ("JPEG", (240, 320))
    markup = view.view_html(answer)
    assert response.file_url(response.view_file(answer)) in markup and "data-legend=" in markup
    assert response.file_url(response.photo_file(answer)) in markup
    assert markup.count("class='chip'") == len(result.legend)  # every class, the top few shown at first
    assert markup.count("<li class=extra>") == max(0, len(result.legend) - view.TOP_CLASSES)
    # Re-blends come from the kept display pictures, exactly as from the result itself.
    with Image.open(response.reblend(answer, 0.3)) as blended:
        expected = Image.open(io.BytesIO(jpeg_bytes(result.display_overlay(0.3))))
        assert np.array_equal(np.asarray(blended), np.asarray(expected))
    with Image.open(response.full_overlay_file(answer, 0.3)) as full:
        assert np.array_equal(np.asarray(full), result.overlay(0.3))


def test_a_response_keeps_no_pixels_in_memory(small_display, tmp_path):
    """What a visitor's session holds: paths and small facts; the pixels are in files."""
    result = small_display.segment(photo("coffee", (600, 800)))
    answer = response.respond(result, 0.5, tmp_path)
    arrays = [v for v in vars(answer).values() if isinstance(v, np.ndarray)]
    assert [a is result.colours for a in arrays] == [True]  # the session's palette, shared
    assert np.array_equal(np.load(answer.source), result.image)


def test_encoding_runs_while_the_next_request_is_in_the_engine(session_factory, tmp_path):
    """Two requests at once: the second enters the engine as soon as the first leaves it, not after its encoding."""
    session = session_factory("random:tiny")
    images = [photo("astronaut", (900, 1200)), photo("rocket", (900, 1200))]
    results: dict[int, object] = {}
    start = threading.Barrier(2)

    def request(k: int) -> None:
        start.wait()
        folder = tmp_path / str(k)
        folder.mkdir()
        results[k] = response.respond(session.segment(images[k]), 0.5, folder)

    threads = [threading.Thread(target=request, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def first(result, name):
        return next(s for s in result.spans.spans if s.name == name)

    a, b = sorted(results.values(), key=lambda r: first(r, "execute").start_ns)
    encoding = [s for s in a.spans.spans if s.name.startswith("encode")]
    encoding_end = max(s.start_ns + s.duration_ns for s in encoding)
    assert first(b, "execute").start_ns < encoding_end, "the engine waited for the previous response's encoding"
    assert any(s.name == "engine wait" for s in b.spans.spans)  # it queued for the slot, and the spans say so


def test_display_side_option(monkeypatch):
    from segdemo.web.demo import AppConfig

    assert AppConfig.from_env({}).display_side == 1600
    assert AppConfig.from_env({"SEGDEMO_DISPLAY_SIDE": "1024"}).display_side == 1024
