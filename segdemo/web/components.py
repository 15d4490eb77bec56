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
