"""Gradio components that hand raw uploads to segdemo, which decodes and validates them itself."""

from __future__ import annotations

import base64

import gradio as gr


class ImageUpload(gr.Image):
    """gr.Image that passes the upload on undecoded (path or bytes).

    gr.Image opens uploads with Pillow before the handler runs, so a corrupt or non-image
    upload would fail with a generic error; segdemo's decoder gives the user a clear sentence instead.
    """

    is_template = True  # render with gr.Image's own front end (no custom component bundle)

    def preprocess(self, payload):  # type: ignore[override]
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path
