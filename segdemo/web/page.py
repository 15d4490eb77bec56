"""The page around the tabs: theme (colours with enough contrast), layout rules, and names for the parts of
Gradio's markup that have none (found by axe-core; see tests/test_page.py)."""

from __future__ import annotations

import gradio as gr


def theme() -> gr.themes.Base:
    """Gradio's default look with text contrast of at least 4.5:1 (WCAG AA) on buttons, tabs and small print."""
    return gr.themes.Default(primary_hue="blue").set(
        button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800",
        button_primary_background_fill_dark="*primary_700", button_primary_background_fill_hover_dark="*primary_800",
        color_accent="*primary_700", color_accent_soft="*primary_50", body_text_color_subdued="*neutral_600",
        body_text_color_subdued_dark="*neutral_300",
    )


CSS = """
#title h1 {font-size: clamp(1.25rem, 4.5vw, 1.9rem); margin-bottom: 2px}
#title p {margin: 0}
@media (max-width: 520px) {
  #tabs .tab-container button {padding-left: 7px; padding-right: 7px; font-size: 15px}
  .js-plotly-plot .modebar-container {display: none}  /* on a phone Plotly's toolbar covers the chart's labels */
}
.segdemo-downloads {display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; font-size: 14px}
.segdemo-downloads a {color: var(--link-text-color); text-decoration: underline}
#downloads-row {align-items: center; flex-wrap: wrap}
#downloads {flex: 1 1 300px}
"""

# Runs once the page is up and again whenever Gradio adds markup: example thumbnails become buttons with a name, an
# empty output's labelled box gets the role its label needs, and an upload area's name matches its visible text.
PAGE_JS = """() => {
  let queued = false;
  const fix = () => {
    queued = false;
    document.querySelectorAll('button.gallery-item:not([aria-label])').forEach((button, k) => {
      const img = button.querySelector('img'), src = img ? img.getAttribute('src') || '' : '';
      const name = decodeURIComponent(src.split('/').pop().split('?')[0].replace(/\\.[a-z]+$/i, ''));
      button.setAttribute('aria-label', 'Example: ' + (name || String(k + 1)));
    });
    document.querySelectorAll('.unpadded_box.empty[aria-label]:not([role])').forEach(box => {
      box.setAttribute('role', 'img');
    });
    document.querySelectorAll('button.boundedheight[aria-label]').forEach(button => {
      if (!button.innerText.includes(button.getAttribute('aria-label'))) button.removeAttribute('aria-label');
    });
  };
  new MutationObserver(() => { if (!queued) { queued = true; requestAnimationFrame(fix); } })
    .observe(document.body, {childList: true, subtree: true});
  fix();
}"""
