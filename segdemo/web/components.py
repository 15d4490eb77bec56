"""Gradio components that hand raw uploads to segdemo, which decodes and validates them itself."""

from __future__ import annotations

import base64

import gradio as gr
from gradio.data_classes import ImageData

from .config import AppConfig


class ImageUpload(gr.Image):
    """gr.Image that passes the upload on undecoded (path or bytes).

    gr.Image opens uploads with Pillow before the handler runs, so a corrupt or non-image
    upload would fail with a generic error; segdemo's decoder gives the user a clear sentence instead.
    """

    is_template = True  # render with gr.Image's own front end (no custom component bundle)
    # The largest image accepted inline as a data: URL, checked before decoding. Set on the instance, not through
    # __init__: Gradio builds a component's front-end config from its constructor's signature.
    max_bytes: int | None = None

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            encoded = payload.url.split(",", 1)[-1]
            if self.max_bytes is not None and len(encoded) * 3 // 4 > self.max_bytes:
                raise gr.Error(f"the image is {len(encoded) * 3 / 4 / 2**20:.1f} MB; images are limited to "
                               f"{self.max_bytes / 2**20:.0f} MB")
            return base64.b64decode(encoded)
        return payload.path


def live_camera(config: AppConfig, **options) -> ImageUpload:
    """The Live tab's webcam: streams undecoded frames, asks the camera for `config.live_size`, holds image limits."""
    camera = ImageUpload(sources=["webcam"], streaming=True, type="filepath",
                         webcam_options=gr.WebcamOptions(constraints=config.webcam_constraints), **options)
    camera.max_bytes = config.image_limits.bytes
    return camera


class LiveOverlay(gr.Image):
    """gr.Image output that takes JPEG bytes and sends them inline (a data URL in the stream's message).

    A live frame then costs no cache file and no second HTTP request: the page paints it from the message itself.
    """

    is_template = True

    def postprocess(self, value):
        if isinstance(value, (bytes, bytearray)):
            return ImageData(url="data:image/jpeg;base64," + base64.b64encode(value).decode(), orig_name="frame.jpg",
                             mime_type="image/jpeg")
        return super().postprocess(value)


HOVER_CSS = """
.segdemo-hover .stage {position: relative; display: inline-block; max-width: 100%; line-height: 0}
.segdemo-hover img.photo {max-width: 100%; height: auto; display: block}
.segdemo-hover canvas.shade {position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none}
.segdemo-hover .tip {position: absolute; pointer-events: none; background: rgba(0,0,0,.75); color: #fff;
  padding: 2px 6px; border-radius: 4px; font-size: 13px; line-height: 1.4; white-space: nowrap; display: none}
.segdemo-hover .chips {margin-top: 6px; line-height: 1.9}
.segdemo-hover .chip {display: inline-block; margin: 0 6px 0 0; padding: 0 6px; border-radius: 10px;
  border: 1px solid var(--border-color-primary); cursor: pointer; font-size: 13px; line-height: 1.6}
.segdemo-hover .chip.on {outline: 2px solid var(--color-accent)}
.segdemo-hover .chip i {display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: 4px}
"""

# The browser reads the class id of every displayed pixel from the palette PNG once (its colours are the class
# colours, unique per id) and dims everything but the class under the pointer or chip: one image for all classes.
HOVER_JS = """
const state = {url: null, ids: null, w: 0, h: 0, names: new Map(), current: -1};
const root = () => element.querySelector('.segdemo-hover');
function load() {
  const r = root();
  if (!r || !r.dataset.classes || r.dataset.classes === state.url) return;
  const url = r.dataset.classes;
  Object.assign(state, {url, ids: null, current: -1});
  const legend = JSON.parse(r.dataset.legend || '[]');
  state.names = new Map(legend.map(e => [e[0], e[4] + ' ' + e[5] + ' %']));
  const byColour = new Map(legend.map(e => [(e[1] << 16) | (e[2] << 8) | e[3], e[0]]));
  const img = new Image();
  img.onload = () => {
    if (state.url !== url) return;
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    const ids = new Int16Array(c.width * c.height);
    let lastKey = -1, lastId = -1;
    for (let i = 0, j = 0; i < ids.length; i++, j += 4) {
      const key = (px[j] << 16) | (px[j + 1] << 8) | px[j + 2];
      if (key !== lastKey) { lastKey = key; const id = byColour.get(key); lastId = id === undefined ? -1 : id; }
      ids[i] = lastId;
    }
    Object.assign(state, {ids, w: c.width, h: c.height});
    const now = root();
    if (now) now.dataset.ready = '1';
  };
  img.src = url;
}
function highlight(id, event) {
  const r = root();
  if (!r || !state.ids) return;
  const canvas = r.querySelector('canvas.shade'), tip = r.querySelector('.tip');
  r.querySelectorAll('.chip').forEach(chip => chip.classList.toggle('on', Number(chip.dataset.id) === id));
  if (id !== state.current) {
    state.current = id;
    canvas.width = state.w; canvas.height = state.h;
    const ctx = canvas.getContext('2d');
    if (id >= 0) {
      const shade = ctx.createImageData(state.w, state.h), d = shade.data;
      for (let i = 0, j = 3; i < state.ids.length; i++, j += 4) if (state.ids[i] !== id) d[j] = 170;
      ctx.putImageData(shade, 0, 0);
    }
    r.dataset.highlighted = String(id);
  }
  if (event && id >= 0) {
    const box = r.querySelector('.stage').getBoundingClientRect();
    tip.textContent = state.names.get(id) || ('class ' + id);
    tip.style.left = (event.clientX - box.left + 12) + 'px';
    tip.style.top = (event.clientY - box.top + 12) + 'px';
    tip.style.display = 'block';
  } else {
    tip.style.display = 'none';
  }
}
element.addEventListener('mousemove', event => {
  const stage = event.target.closest('.stage');
  if (stage && state.ids) {
    const box = stage.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left) / box.width * state.w);
    const y = Math.floor((event.clientY - box.top) / box.height * state.h);
    const inside = x >= 0 && y >= 0 && x < state.w && y < state.h;
    highlight(inside ? state.ids[y * state.w + x] : -1, event);
    return;
  }
  const chip = event.target.closest('.chip');
  highlight(chip ? Number(chip.dataset.id) : -1, null);
});
element.addEventListener('mouseleave', () => highlight(-1, null));
watch('value', load);
load();
"""


def hover_view(**options) -> gr.HTML:
    """The hover-to-highlight view: its value is response.hover_html's markup, its script does the highlighting."""
    empty = "<div class='segdemo-hover'><p>Segment an image, then point at a class to highlight it.</p></div>"
    return gr.HTML(empty, css_template=HOVER_CSS, js_on_load=HOVER_JS, **options)
