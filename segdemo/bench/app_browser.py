"""`segdemo bench --app` in Chromium (Playwright, headless): click → overlay painted and click → everything painted,
by the page's performance.now(); the upload before each click is not timed, the floor is timed the same way."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import SegdemoError
from ..optional import missing
from . import app_report as report

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
APP_TARGETS = ["overlay", "status", "downloads", "timeline"]
FLOOR_TARGETS = ["overlay"]
PAGE_STATES = {"Profiling never opened": False, "Profiling opened once": True}
READY_MS = 900_000  # the page waits for the app's background start-up (banner) at most this long
CLICK_TIMEOUT_MS = 120_000

# One page.evaluate per click: snapshot, t0, click, then poll once per frame. A target is "done" once its Gradio
# loading state came and went (seen by a MutationObserver: a fast one can start and end between two frames) or its
# content changed, and every <img> in it is loaded; identical values leave the DOM as it was, hence the loading state
# (and, for the follow-up step, which shows none, the download links that always change).
CLICK_JS = """async ({targets, timeoutMs}) => {
  const frame = () => new Promise(r => requestAnimationFrame(r)), el = id => document.getElementById(id);
  const pending = e => { const t = e && e.querySelector('[data-testid="status-tracker"]');
                         return !!t && !t.classList.contains('hide'); };
  const loaded = e => [...e.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0);
  const content = e => { const c = e.cloneNode(true);
    c.querySelectorAll('[data-testid="status-tracker"]').forEach(t => t.remove()); return c.innerHTML; };
  const img = () => document.querySelector('#overlay img.after') || document.querySelector('#overlay img');
  const button = [...document.querySelectorAll('button.primary')].find(b => b.innerText.trim() === 'Segment');
  if (!button) return {error: 'no Segment button'};
  const snap = {}, saw = {}, src0 = img() ? img().src : null;
  for (const id of targets) { snap[id] = el(id) ? content(el(id)) : null; saw[id] = false; }
  let t0 = null, srcAt = null;  // srcAt: the response is rendered (new src set), before its PNG is fetched
  const watch = () => { for (const id of targets) if (pending(el(id))) saw[id] = true;
    if (srcAt === null && t0 !== null && img() && img().src !== src0) srcAt = performance.now() - t0; };
  const observer = new MutationObserver(watch);
  observer.observe(document.body, {subtree: true, childList: true, attributeFilter: ['class', 'src']});
  // The follow-up step's outputs arrive together; the download links name the request's files, so they always
  // change, and a target whose value came back the same (an equal status line) is done when the links are.
  const changed = id => { const e = el(id); return !!e && (saw[id] || content(e) !== snap[id]); };
  const done = id => { const e = el(id); if (!e) return snap[id] === null;
    return !pending(e) && loaded(e) && (changed(id) || (id !== 'downloads' && id !== 'overlay' &&
                                                        targets.includes('downloads') && changed('downloads'))); };
  const overlayDone = () => { const i = img(); if (!i || !i.complete || !i.naturalWidth) return false;
    return i.src !== src0 || (saw.overlay && !pending(el('overlay'))); };
  performance.clearResourceTimings();  // the buffer holds 250 entries; each click adds about 25
  t0 = performance.now();
  button.click();
  let overlay = null, all = null;
  while (all === null && performance.now() - t0 < timeoutMs) {
    await frame();
    watch();
    const ov = overlay === null && overlayDone(), al = (overlay !== null || ov) && targets.every(done);
    if (ov || al) { await frame(); const t = performance.now() - t0; if (ov) overlay = t; if (al) all = t; }
  }
  observer.disconnect();
  const status = el('status'), res = img() ? performance.getEntriesByName(img().src).pop() : null;
  return {overlay_ms: overlay, all_ms: all, same_src: img() ? img().src === src0 : null, src_ms: srcAt,
          fetch: res ? {start_ms: res.startTime - t0, end_ms: res.responseEnd - t0, bytes: res.encodedBodySize}
                     : null,
          error: all === null ? `${overlay === null ? 'overlay' : targets.filter(id => !done(id))} not painted ` +
                                `${timeoutMs} ms after the click` : null,
          status: status ? status.innerText : null,
          present: Object.fromEntries(targets.map(id => [id, snap[id] !== null])),
          hidden: Object.fromEntries(targets.map(id => [id, el(id) ? el(id).offsetParent === null : null]))};
}"""


def browser_unavailable(chromium: str) -> str | None:
    """Why the browser timing cannot run here, or None."""
    if not (shutil.which(chromium) or Path(chromium).is_file()):
        return f"no Chromium at {chromium} (apt-get install chromium, or set SEGDEMO_CHROMIUM)"
    return missing("playwright.sync_api", "playwright", "it drives the system Chromium")


def time_browser(chromium: str, floor_url: str, app_url: str, images: dict[str, dict], names: list[str],
                 warmup: int, iters: int) -> dict[str, Any]:
    """Per image: the floor's click → painted, and the app's click → overlay / everything in each page state."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        try:
            for name in names:
                paths = images[name]["paths"]
                floor = _clicks(browser, floor_url, paths, FLOOR_TARGETS, False, warmup, iters)
                out[name] = {"floor": {"painted_ms": floor["overlay_ms"], "raw": floor["raw"]},
                             "modes": {state: _clicks(browser, app_url, paths, APP_TARGETS, opened, warmup, iters)
                                       for state, opened in PAGE_STATES.items()}}
        finally:
            browser.close()
    return out


def _clicks(browser: Any, url: str, paths: list[str], targets: list[str], open_profiling: bool, warmup: int,
            iters: int) -> dict[str, Any]:
    """Upload (untimed), then one page.evaluate that clicks Segment and polls by requestAnimationFrame."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})  # a fresh HTTP cache per page state
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("(() => { const b = document.querySelector('#banner');"
                               " return b && !b.innerText.includes('Starting:'); })()", timeout=READY_MS)
        if open_profiling:  # Gradio mounts a tab's content when it is first opened and keeps it, hidden
            page.get_by_role("tab", name="Profiling").click()
            page.locator("#timeline").wait_for(state="attached", timeout=30_000)
            page.get_by_role("tab", name="Segment").click()
        file_input = page.locator("input[type=file]").first
        block = file_input.evaluate_handle("e => e.closest('.block')")
        runs = []
        for i in range(warmup + iters):
            before = block.evaluate("b => [...b.querySelectorAll('img')].map(i => i.src).join(' ')")
            file_input.set_input_files(paths[i % len(paths)])
            page.wait_for_function(  # the preview shows the uploaded file: the upload is over, outside the timing
                "([b, before]) => { const i = [...b.querySelectorAll('img')]; return i.length > 0 &&"
                " i.map(x => x.src).join(' ') !== before && i.every(x => x.complete && x.naturalWidth > 0); }",
                arg=[block, before], timeout=120_000)
            page.wait_for_timeout(250)
            run = page.evaluate(CLICK_JS, {"targets": targets, "timeoutMs": CLICK_TIMEOUT_MS})
            if run.get("error"):
                raise SegdemoError(f"browser: {run['error']} (iteration {i})")
            if i >= warmup:
                runs.append(run)
    finally:
        context.close()
    last = runs[-1] if runs else {}
    return {"overlay_ms": report.stats([r["overlay_ms"] for r in runs]),
            "all_ms": report.stats([r["all_ms"] for r in runs]),
            "session_ms": report.stats([v for r in runs if (v := report.status_ms(r.get("status"))) is not None]),
            "overlay_minus_session_ms": report.stats([r["overlay_ms"] - v for r in runs  # per click, same request
                                                      if (v := report.status_ms(r.get("status"))) is not None]),
            "src_set_ms": report.stats([r["src_ms"] for r in runs if r.get("src_ms") is not None]),
            "fetched_ms": report.stats([r["fetch"]["end_ms"] for r in runs if r.get("fetch")]),
            "timeline": _timeline_state(last), "same_src": sum(bool(r.get("same_src")) for r in runs), "raw": runs}


def _timeline_state(run: dict[str, Any]) -> str:
    if "timeline" not in run.get("present", {}):
        return "–"
    if not run["present"]["timeline"]:
        return "timeline not in the DOM (tab never opened: not counted)"
    return "timeline hidden, its DOM update counted" if run["hidden"]["timeline"] else "timeline visible, counted"


