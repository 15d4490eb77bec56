"""scripts/screenshots.py against the real app: one picture per tab and window size, each of the window's size."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"


def load_script():
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


screenshots = load_script()
pytestmark = pytest.mark.skipif(not shutil.which(screenshots.CHROMIUM), reason=f"no Chromium at "
                                f"{screenshots.CHROMIUM} (apt-get install chromium; .ci/run installs it)")


def test_every_tab_at_every_size(app_url, tmp_path):
    pytest.importorskip("playwright.sync_api")
    shots = screenshots.capture(app_url, tmp_path)
    expected = {(tab, size.name) for tab in screenshots.TABS for size in screenshots.SIZES}
    assert {(shot.tab, shot.size.name) for shot in shots} == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(shot.path.name for shot in shots)
    for shot in shots:
        with Image.open(shot.path) as image:
            assert image.format == "JPEG" and image.size == shot.size.pixels, shot
        assert shot.path.stat().st_size <= screenshots.MAX_BYTES, shot
        assert shot.page_height >= shot.size.height, shot  # the page's scroll height, at least the window's
    phone = next(size for size in screenshots.SIZES if size.mobile)
    assert phone.pixels == (780, 1688)  # a 390×844 phone at device scale 2
    print(screenshots.report(shots))


def test_png_is_a_palette_image(tmp_path):
    """--format png: the screenshot's colours reduced to a 256-entry palette, same size."""
    import io

    from tests.conftest import photo

    picture = io.BytesIO()
    Image.fromarray(photo("coffee")).save(picture, format="PNG")
    screenshots.save(picture.getvalue(), tmp_path / "shot.png")
    with Image.open(tmp_path / "shot.png") as image:
        assert image.mode == "P" and image.size == (600, 400)
        colours = image.getcolors(256)
        assert colours is not None and len(colours) > 64  # a photograph keeps many of its colours
