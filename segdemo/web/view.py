"""The Segment tab's one main picture: the overlay, with classes highlighted, hidden or compared with the photo in
the browser (markup made from a Response here, the interaction in VIEW_JS); no request reruns the model for it."""

from __future__ import annotations

import html
import json

import gradio as gr

from .response import Response, file_url, legend_file, photo_file, view_file

TOP_CLASSES = 8  # chips shown before "Show all"

VIEW_CSS = """
.segdemo-view {--cut: 0%}
.segdemo-view .stage {position: relative; display: inline-block; max-width: 100%; line-height: 0;
  touch-action: manipulation}
.segdemo-view .after {position: relative; clip-path: inset(0 0 0 var(--cut))}
.segdemo-view img.after {display: block; max-width: 100%; max-height: 56vh; width: auto; height: auto}
.segdemo-view img.before, .segdemo-view canvas {position: absolute; inset: 0; width: 100%; height: 100%}
.segdemo-view canvas {pointer-events: none}
.segdemo-view .stage::after {content: ''; position: absolute; top: 0; bottom: 0; left: var(--cut); width: 2px;
  background: #fff; box-shadow: 0 0 2px #000; pointer-events: none; display: var(--divider, none)}
.segdemo-view .tip {position: absolute; pointer-events: none; background: rgba(0,0,0,.8); color: #fff; padding: 2px 6px;
  border-radius: 4px; font-size: 13px; line-height: 1.4; white-space: nowrap; display: none; z-index: 2}
.segdemo-view.empty .stage, .segdemo-view.empty .tools, .segdemo-view.empty .chips,
.segdemo-view.empty .more {display: none}
.segdemo-view:not(.empty) .placeholder {display: none}
.segdemo-view .placeholder {min-height: 200px; display: flex; align-items: center; justify-content: center;
  border: 1px dashed var(--border-color-primary); border-radius: 8px; color: var(--body-text-color); padding: 16px;
  text-align: center}
.segdemo-view .tools {display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: center; margin: 6px 0 2px;
  font-size: 13px}
.segdemo-view .tools label {display: flex; align-items: center; gap: 6px}
.segdemo-view button {font: inherit; font-size: 13px; color: var(--body-text-color); cursor: pointer;
  background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); border-radius: 12px;
  padding: 1px 8px; line-height: 1.6}
.segdemo-view button:disabled {cursor: default; opacity: .6}
.segdemo-view button:focus-visible, .segdemo-view input:focus-visible {outline: 2px solid var(--color-accent);
  outline-offset: 1px}
.segdemo-view .chips {list-style: none; margin: 4px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 6px}
.segdemo-view .chips li {display: inline-flex; margin: 0; padding: 0}
.segdemo-view .chips li.extra {display: none}
.segdemo-view.all .chips li.extra {display: inline-flex}
.segdemo-view .chip {border-radius: 12px 0 0 12px}
.segdemo-view .hide {border-radius: 0 12px 12px 0; border-left: none; padding: 1px 6px}
.segdemo-view .chip[aria-pressed='true'] {background: var(--button-primary-background-fill); color: #fff;
  border-color: var(--color-accent)}
.segdemo-view .hide[aria-pressed='true'] {text-decoration: line-through}
.segdemo-view .chip i {display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: 4px;
  vertical-align: -1px; box-shadow: 0 0 0 1px rgba(0,0,0,.3)}
.segdemo-view .more {margin-top: 4px}
"""

# Class ids of the shown pixels come from the palette PNG (its colours are the class colours, unique per id), read
# once; highlighting dims the other classes, hiding paints the photo over a class, comparing clips the overlay.
VIEW_JS = """
const S = {url: null, ids: null, photo: null, w: 0, h: 0, names: new Map(), all: [], pinned: new Set(),
           hidden: new Set(), hover: -1, cut: 0, more: false, drawn: ''};
const root = () => element.querySelector('.segdemo-view');
function pixels(url, done) {
  const img = new Image();
  img.onload = () => {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(img, 0, 0);
    done(ctx.getImageData(0, 0, c.width, c.height));
  };
  img.src = url;
}
function load() {
  const r = root();
  if (r && r.dataset.classes && r.dataset.classes !== S.url) {
    const url = r.dataset.classes, photo = r.dataset.photo, legend = JSON.parse(r.dataset.legend || '[]');
    Object.assign(S, {url, ids: null, photo: null, pinned: new Set(), hidden: new Set(), hover: -1, cut: 0,
                      more: false, drawn: ''});
    S.names = new Map(legend.map(e => [e[0], e[4] + ' ' + e[5] + ' %']));
    S.all = legend.map(e => e[0]);
    const byColour = new Map(legend.map(e => [(e[1] << 16) | (e[2] << 8) | e[3], e[0]]));
    pixels(url, data => {
      if (S.url !== url) return;
      const px = data.data, ids = new Int16Array(data.width * data.height);
      let lastKey = -1, lastId = -1;
      for (let i = 0, j = 0; i < ids.length; i++, j += 4) {
        const key = (px[j] << 16) | (px[j + 1] << 8) | px[j + 2];
        if (key !== lastKey) { lastKey = key; const id = byColour.get(key); lastId = id === undefined ? -1 : id; }
        ids[i] = lastId;
      }
      Object.assign(S, {ids, w: data.width, h: data.height, drawn: ''});
      render();
    });
    pixels(photo, data => { if (S.url === url) { S.photo = data; S.drawn = ''; render(); } });
    requestAnimationFrame(reveal);
  }
  render();
}
function reveal() {  // a new result: on a phone (the view below the inputs) it is brought into view, classes too
  const r = root();
  if (!r) return;
  const top = r.getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight * 0.4) r.scrollIntoView({block: 'start', behavior: 'instant'});
}
function lookup(ids) {
  const table = new Uint8Array(32768);
  ids.forEach(id => { if (id >= 0) table[id] = 1; });
  return table;
}
function draw(r, lit) {
  const shade = r.querySelector('canvas.shade'), reveal = r.querySelector('canvas.reveal');
  for (const c of [shade, reveal]) { c.width = S.w; c.height = S.h; }
  const n = S.w * S.h;
  if (lit.size) {
    const on = lookup(lit), ctx = shade.getContext('2d'), img = ctx.createImageData(S.w, S.h), d = img.data;
    for (let i = 0, j = 3; i < n; i++, j += 4) if (S.ids[i] < 0 || !on[S.ids[i]]) d[j] = 170;
    ctx.putImageData(img, 0, 0);
  }
  if (S.hidden.size && S.photo && S.photo.width === S.w && S.photo.height === S.h) {
    const off = lookup(S.hidden), ctx = reveal.getContext('2d'), img = ctx.createImageData(S.w, S.h), d = img.data;
    const p = S.photo.data;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      if (S.ids[i] >= 0 && off[S.ids[i]]) { d[j] = p[j]; d[j + 1] = p[j + 1]; d[j + 2] = p[j + 2]; d[j + 3] = 255; }
    }
    ctx.putImageData(img, 0, 0);
  }
}
function render() {
  const r = root();
  if (!r) return;
  const lit = new Set(S.pinned);
  if (S.hover >= 0) lit.add(S.hover);
  const shade = r.querySelector('canvas.shade');
  const key = [S.url, S.w, !!S.photo, [...lit].sort().join(','), [...S.hidden].sort().join(',')].join('|');
  if (S.ids && shade && (key !== S.drawn || shade.width !== S.w)) { draw(r, lit); S.drawn = key; }
  if (S.ids) r.dataset.ready = '1';
  r.dataset.highlighted = [...lit].join(',');
  r.dataset.hidden = [...S.hidden].join(',');
  r.classList.toggle('all', S.more);
  r.style.setProperty('--cut', S.cut + '%');
  r.style.setProperty('--divider', S.cut > 0 ? 'block' : 'none');
  r.querySelectorAll('.chip').forEach(b => {
    b.setAttribute('aria-pressed', String(S.pinned.has(Number(b.dataset.id))));
  });
  r.querySelectorAll('.hide').forEach(b => {
    const off = S.hidden.has(Number(b.dataset.id));
    b.setAttribute('aria-pressed', String(off));
    b.textContent = off ? 'show' : 'hide';
  });
  const more = r.querySelector('.more');
  if (more) {
    more.setAttribute('aria-expanded', String(S.more));
    more.textContent = S.more ? 'Show top classes' : more.dataset.label;
  }
  const only = r.querySelector('.only');
  if (only) only.disabled = S.pinned.size === 0;
  const compare = r.querySelector('input.compare');
  if (compare && Number(compare.value) !== S.cut) compare.value = String(S.cut);
}
function at(event) {
  const stage = event.target.closest('.stage');
  if (!stage || !S.ids) return -1;
  const box = stage.getBoundingClientRect();
  const x = Math.floor((event.clientX - box.left) / box.width * S.w);
  const y = Math.floor((event.clientY - box.top) / box.height * S.h);
  return x >= 0 && y >= 0 && x < S.w && y < S.h ? S.ids[y * S.w + x] : -1;
}
function tip(event, id) {
  const r = root(), t = r && r.querySelector('.tip');
  if (!t) return;
  if (id < 0 || !event) { t.style.display = 'none'; return; }
  const box = r.querySelector('.stage').getBoundingClientRect();
  t.textContent = S.names.get(id) || ('class ' + id);
  t.style.left = Math.min(event.clientX - box.left + 12, box.width - 120) + 'px';
  t.style.top = (event.clientY - box.top + 12) + 'px';
  t.style.display = 'block';
}
function toggle(set, id) { if (set.has(id)) set.delete(id); else set.add(id); }
element.addEventListener('mousemove', event => {
  if (event.target.closest('.stage')) {
    const id = at(event);
    tip(event, id);
    if (id !== S.hover) { S.hover = id; render(); }
  }
});
element.addEventListener('mouseover', event => {
  const chip = event.target.closest('.chip');
  if (chip && Number(chip.dataset.id) !== S.hover) { S.hover = Number(chip.dataset.id); render(); }
});
element.addEventListener('mouseout', event => {
  const leaving = event.target.closest('.stage, .chip');
  if (leaving && !leaving.contains(event.relatedTarget)) { S.hover = -1; tip(null, -1); render(); }
});
element.addEventListener('click', event => {
  const button = event.target.closest('button');
  if (!button) {
    const id = at(event);  // a click or a tap on the picture pins the class under it
    if (id >= 0) { toggle(S.pinned, id); tip(event, id); render(); }
    return;
  }
  const id = Number(button.dataset.id);
  if (button.classList.contains('chip')) toggle(S.pinned, id);
  else if (button.classList.contains('hide')) toggle(S.hidden, id);
  else if (button.classList.contains('more')) S.more = !S.more;
  else if (button.classList.contains('only')) S.hidden = new Set(S.all.filter(c => !S.pinned.has(c)));
  else if (button.classList.contains('reset')) { S.pinned = new Set(); S.hidden = new Set(); S.cut = 0; }
  render();
});
element.addEventListener('input', event => {
  if (event.target.matches('input.compare')) { S.cut = Number(event.target.value); render(); }
});
watch('value', load);
load();
"""

# The first paint: the overlay goes into the view as soon as /segment answers, before the follow-up step; decoded
# first, so the picture appears at its size at once (nothing below it jumps); on a phone it is then scrolled to.
PAINT_JS = """(overlay) => new Promise(resolve => {
  const r = document.querySelector('#overlay .segdemo-view');
  const url = overlay && (overlay.url || overlay.path);
  if (!r || !url) return resolve([]);
  const img = new Image();
  const done = () => {
    const after = r.querySelector('img.after');
    if (img.naturalWidth && after) {
      after.setAttribute('width', String(img.naturalWidth));
      after.setAttribute('height', String(img.naturalHeight));
      after.setAttribute('src', img.src);
    }
    r.classList.remove('empty');
    requestAnimationFrame(() => {
      const box = r.getBoundingClientRect();
      if (box.top < 0 || box.top > window.innerHeight * 0.4) r.scrollIntoView({block: 'start', behavior: 'instant'});
      resolve([]);
    });
  };
  img.onload = done; img.onerror = done;
  img.src = url;
})"""

# After /full_overlay made the PNG: the browser saves it (one click for the visitor).
SAVE_JS = """(file) => {
  if (file && file.url) {
    const a = document.createElement('a');
    a.href = file.url; a.download = file.orig_name || 'overlay.png';
    document.body.appendChild(a); a.click(); a.remove();
  }
  return [];
}"""

_SKELETON = ("<div class='stage'><img class='before' alt='The photo as sent'{before}>"
             "<div class='after'><img class='after' alt='{alt}'{after}><canvas class='reveal'></canvas></div>"
             "<canvas class='shade'></canvas><div class='tip' aria-hidden='true'></div></div>")
EMPTY = ("<div class='segdemo-view empty'>"
         + _SKELETON.format(before="", after="", alt="Segmentation overlay")
         + "<p class='placeholder'>Pick an example or upload an image, then press Segment: the result appears here."
         "</p></div>")


def result_view(**options) -> gr.HTML:
    """The main picture: its value is view_html's markup (or EMPTY), its script does the in-browser interaction."""
    return gr.HTML(EMPTY, css_template=VIEW_CSS, js_on_load=VIEW_JS, **options)


def view_html(response: Response, overlay: str | None = None) -> str:
    """The result as one picture with its tools and class chips (largest first; the top few shown at once)."""
    entries = response.legend
    table = [[e.id, *(int(e.color[k:k + 2], 16) for k in (1, 3, 5)), e.name, round(e.share * 100, 1)]
             for e in entries]
    height, width = response.info["display_size"]
    size = f" width='{width}' height='{height}'"
    chips = "".join(
        f"<li{' class=extra' if k >= TOP_CLASSES else ''}><button type='button' class='chip' data-id='{e.id}' "
        f"aria-pressed='false'><i style='background:{e.color}' aria-hidden='true'></i>{html.escape(e.name)} "
        f"{e.share * 100:.1f} %</button><button type='button' class='hide' data-id='{e.id}' aria-pressed='false' "
        f"aria-label='Hide {html.escape(e.name)}'>hide</button></li>"
        for k, e in enumerate(entries))
    more = (f"<button type='button' class='more' aria-expanded='false' data-label='Show all {len(entries)} classes'>"
            f"Show all {len(entries)} classes</button>" if len(entries) > TOP_CLASSES else "")
    top = ", ".join(e.name for e in entries[:3])
    stage = _SKELETON.format(
        before=f" src='{html.escape(file_url(photo_file(response)))}'{size}",
        after=f" src='{html.escape(overlay or file_url(response.overlay))}'{size}",
        alt=html.escape(f"Segmentation overlay: {top}" if top else "Segmentation overlay"))
    tools = ("<div class='tools'><label>Compare with the photo <input type='range' class='compare' min='0' "
             "max='100' value='0'></label><button type='button' class='only' disabled>Only highlighted</button>"
             "<button type='button' class='reset'>Clear selection</button></div>")
    return (f"<div class='segdemo-view' data-classes='{html.escape(file_url(view_file(response)))}' "
            f"data-photo='{html.escape(file_url(photo_file(response)))}' "
            f"data-legend='{html.escape(json.dumps(table))}'>{stage}{tools}"
            f"<ul class='chips' aria-label='Classes in the picture, largest first: press one to highlight it'>"
            f"{chips}</ul>{more}</div>")


def downloads_html(response: Response) -> str:
    """Links that save the result's files (the full-size overlay has its own button: it is made on demand)."""
    links = [(response.classes, "classes.png", "Class map (PNG)"),
             (legend_file(response), "legend.json", "Legend (JSON)"),
             (response.overlay, "overlay.jpg", "Overlay as shown (JPEG)")]
    return "<div class='segdemo-downloads'>" + "".join(
        f"<a href='{html.escape(file_url(path))}' download='{name}'>{label}</a>" for path, name, label in links
    ) + "</div>"
