"""The README's screenshots: the real app in Chromium, one picture per tab at desktop and phone size.

    python scripts/screenshots.py --out docs/screenshots      # starts `python app.py --model random:b0` itself
    python scripts/screenshots.py --url http://127.0.0.1:7860/ --out docs/screenshots

It segments an example photograph on the Segment tab, then visits every tab and writes `<tab>-<size>.jpg` (the
viewport; JPEG at the best quality that keeps the file under 150 KB, or `--format png` for 256-colour PNGs) and prints
each page's full scroll height.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SEGDEMO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

# What the script knows of the page's layout, all here: tabs are found by their names, the rest by these.
TABS = ("Segment", "Live", "Video", "Profiling", "Engine")
SEGMENT_BUTTON = "Segment"  # the button's accessible name on the Segment tab
UPLOAD = "input[type=file]"  # the first file input on the page takes the photo
UPLOADED = "/gradio_api/upload"  # Gradio's upload route: its answer means the file is on the server
BANNER, STARTING = "#banner", "Starting:"  # the start-up banner, and what it says until the session is loaded
DONE, DONE_TEXT = "#status", "ms"  # the element that shows a finished result, and the text it then contains
ERROR_TOAST = ".toast-body.error"  # Gradio's error message (gr.Error)
MORE_TABS = "More tabs"  # the accessible name of Gradio's overflow button ("⋯") for tabs that do not fit
OVERFLOW_MENU = ".overflow-dropdown"  # where Gradio lists the tabs that did not fit
# Per tab, a Playwright selector that is visible once the tab has drawn what it fetches on selection.
TAB_READY = {"Profiling": ".js-plotly-plot", "Engine": "text=Backends tried, in order"}
PHOTO = "coffee"  # the first of the app's example photographs (scikit-image's bundled data)
MAX_BYTES = 150 * 1024  # JPEG quality steps down from the first of QUALITIES until a file fits
QUALITIES = (85, 80, 75, 70, 65, 60)


@dataclass(frozen=True)
class Size:
    """A browser window: its viewport in CSS pixels and how the page is emulated."""

    name: str
    width: int
    height: int
    scale: int = 1
    mobile: bool = False

    @property
    def pixels(self) -> tuple[int, int]:
        """The screenshot's size in image pixels."""
        return self.width * self.scale, self.height * self.scale

    def context(self) -> dict[str, Any]:
        return {"viewport": {"width": self.width, "height": self.height}, "device_scale_factor": self.scale,
                "is_mobile": self.mobile, "has_touch": self.mobile}


SIZES = (Size("desktop", 1280, 900), Size("phone", 390, 844, scale=2, mobile=True))


@dataclass(frozen=True)
class Shot:
    """One screenshot written: which tab at which size, where, and the page's full scroll height (CSS pixels)."""

    tab: str
    size: Size
    path: Path
    page_height: int


def photo_file(folder: Path) -> Path:
    """The example photograph as a JPEG file, as the app's Examples offer it."""
    from PIL import Image
    from skimage import data

    path = folder / f"{PHOTO}.jpg"
    Image.fromarray(getattr(data, PHOTO)()).save(path, quality=92)
    return path


def open_tab(page: Any, name: str) -> None:
    """Select tab `name`, through the overflow menu when the tab bar has no room for it."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() == 0 or not tab.is_visible():
        page.get_by_role("button", name=MORE_TABS).click()
        tab = page.locator(OVERFLOW_MENU).get_by_role("button", name=name, exact=True)
    tab.click()
    page.wait_for_function("name => [...document.querySelectorAll('[role=tab][aria-selected=true]')]"
                           ".some(t => t.innerText.trim() === name)", arg=name, timeout=30_000)


def settle(page: Any, timeout_s: float = 15.0) -> None:
    """Wait until the images in view are loaded and the page's height has stopped changing for half a second."""
    # Images in hidden tabs or further down may load lazily, only once shown: those are left alone.
    page.wait_for_function("[...document.images].every(i => { const r = i.getBoundingClientRect();"
                           " return i.complete || !r.width || !r.height || r.top > innerHeight; })",
                           timeout=int(timeout_s * 1000))
    deadline, last, steady = time.monotonic() + timeout_s, -1, 0
    while time.monotonic() < deadline and steady < 5:
        height = page_height(page)
        steady = steady + 1 if height == last else 0
        last = height
        page.wait_for_timeout(100)


def page_height(page: Any) -> int:
    return int(page.evaluate("Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"))


def segment_photo(page: Any, photo: Path, done: str, done_text: str) -> None:
    """Upload the photo, press Segment and wait until `done` shows `done_text` (the result's status)."""
    # Pressed before the upload is in, Segment would send no image.
    with page.expect_response(lambda response: UPLOADED in response.url and response.ok, timeout=120_000):
        page.locator(UPLOAD).first.set_input_files(str(photo))
    page.wait_for_timeout(500)  # the component takes the uploaded file's URL
    page.get_by_role("button", name=SEGMENT_BUTTON, exact=True).click()
    result = page.locator(done).filter(has_text=done_text).first
    error = page.locator(ERROR_TOAST).first
    result.or_(error).wait_for(state="visible", timeout=300_000)
    if error.is_visible():
        raise SystemExit(f"the app answered with an error: {error.inner_text()}")


def save(png: bytes, path: Path) -> None:
    """Playwright's PNG as `path`: a 256-colour PNG, or a JPEG at the best quality under MAX_BYTES."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as shot:
        image = shot.convert("RGB")
    if path.suffix == ".png":  # flat UI keeps its look in a palette; photographs band
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return
    for quality in QUALITIES:
        data = io.BytesIO()
        image.save(data, format="JPEG", quality=quality, optimize=True, progressive=True)
        if data.tell() <= MAX_BYTES:
            break
    path.write_bytes(data.getvalue())


def capture(url: str, out: Path, *, sizes: tuple[Size, ...] = SIZES, suffix: str = ".jpg", done: str = DONE,
            done_text: str = DONE_TEXT, chromium: str = CHROMIUM) -> list[Shot]:
    """Screenshots of every tab at every size of the app at `url`, written to `out` as `<tab>-<size><suffix>`."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        photo = photo_file(Path(tmp))
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        try:
            for size in sizes:
                context = browser.new_context(**size.context())
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("([sel, text]) => { const b = document.querySelector(sel);"
                                       " return !b || !b.innerText.includes(text); }",
                                       arg=[BANNER, STARTING], timeout=300_000)
                segment_photo(page, photo, done, done_text)
                for tab in TABS:
                    if tab != TABS[0]:  # the Segment tab is open already (clicking it would scroll its button in)
                        open_tab(page, tab)
                    if tab in TAB_READY:
                        page.locator(TAB_READY[tab]).filter(visible=True).first.wait_for(timeout=60_000)
                    page.mouse.move(0, 0)  # no hover effects or tooltips where the click was
                    if tab != TABS[0]:  # the Segment tab stays where the page put its result (a phone scrolls to it)
                        page.evaluate("window.scrollTo(0, 0)")
                    settle(page)
                    path = out / f"{tab.lower()}-{size.name}{suffix}"
                    save(page.screenshot(full_page=False), path)
                    shots.append(Shot(tab, size, path, page_height(page)))
                context.close()
        finally:
            browser.close()
    return shots


@contextlib.contextmanager
def running_app(model: str, build_dir: Path | None, log: Path) -> Iterator[str]:
    """`python app.py --model MODEL` on a free loopback port; yields its URL once the page answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "app.py", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--build-dir", str(build_dir)] if build_dir else []
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the app exited early:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the app did not answer at {url} within 300 s:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(shots: list[Shot]) -> str:
    lines = [f"{'tab':<10} {'size':<8} {'pixels':>10} {'page height':>12} {'file':>8}  path"]
    for shot in shots:
        width, height = shot.size.pixels
        lines.append(f"{shot.tab:<10} {shot.size.name:<8} {f'{width}x{height}':>10} {shot.page_height:>9} px "
                     f"{shot.path.stat().st_size / 1024:>5.0f} KB  {shot.path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the pictures")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="JPEG (default) or 256-colour PNG")
    parser.add_argument("--url", help="a running app to photograph (default: start `python app.py` on loopback)")
    parser.add_argument("--model", default="random:b0", help="the --model of the app this script starts")
    parser.add_argument("--build-dir", type=Path, help="the --build-dir of the app this script starts")
    parser.add_argument("--done", default=DONE, help="selector of the element that shows a finished result")
    parser.add_argument("--done-text", default=DONE_TEXT, help="text that element contains once the result is in")
    parser.add_argument("--chromium", default=CHROMIUM, help="the Chromium executable")
    args = parser.parse_args(argv)
    options = {"suffix": f".{args.format}", "done": args.done, "done_text": args.done_text, "chromium": args.chromium}
    if args.url:
        shots = capture(args.url, args.out, **options)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with running_app(args.model, args.build_dir, Path(tmp) / "app.log") as url:
                shots = capture(url, args.out, **options)
    print(report(shots))


if __name__ == "__main__":
    main()
