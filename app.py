"""Gradio demo of segdemo: upload an image, get its semantic segmentation (wiring only)."""

from __future__ import annotations

import argparse

import gradio as gr

from segdemo.cli import setup_logging
from segdemo.errors import SegdemoError
from segdemo.gradio_parts import ImageUpload
from segdemo.model_source import PRESETS
from segdemo.webapp import AppConfig, Demo, download_files, legend_html, status_line


def parse_args(argv: list[str] | None = None) -> AppConfig:
    env = AppConfig.from_env()
    p = argparse.ArgumentParser(description="segdemo web app (options also read from SEGDEMO_* variables)")
    p.add_argument("--model", default=env.model, help=f"hub id, local directory or {', '.join(PRESETS)}")
    p.add_argument("--backend", default=env.backend, help="auto or a backend name")
    p.add_argument("--precision", default=env.precision, choices=("fp32", "fp16"))
    p.add_argument("--build-dir", default=env.build_dir, help="artifact cache (default build/)")
    p.add_argument("--host", default=env.host, help="bind address (default 127.0.0.1; 0.0.0.0 to serve a network)")
    p.add_argument("--port", type=int, default=env.port)
    p.add_argument("--share", action="store_true", default=env.share, help="create a public share link")
    return AppConfig(**vars(p.parse_args(argv)))


def build(demo: Demo) -> gr.Blocks:
    def segment(image, opacity):
        try:
            result = demo.segment(image)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        classes, legend = download_files(result)
        return result.overlay(opacity), legend_html(result), classes, legend, status_line(result)

    with gr.Blocks(title="segdemo — SegFormer semantic segmentation") as blocks:
        gr.Markdown("# segdemo — SegFormer semantic segmentation (ADE20K, 150 classes)")
        banner = gr.Markdown(visible=True)
        with gr.Row():
            with gr.Column():
                image = ImageUpload(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"])
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                run = gr.Button("Segment", variant="primary")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="numpy", format="png")
                status = gr.Markdown()
                legend = gr.HTML(label="Classes present")
                with gr.Row():
                    classes_file = gr.File(label="Class map (palette PNG, pixel = class id)")
                    legend_file = gr.File(label="Legend (JSON)")
        outputs = [overlay, legend, classes_file, legend_file, status]
        run.click(segment, [image, opacity], outputs, api_name="segment")
        blocks.load(lambda: demo.wait(timeout=None) and demo.banner, None, banner, api_name=False)
    return blocks


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    config = parse_args(argv)
    demo = Demo(config).start()
    blocks = build(demo)
    blocks.queue(default_concurrency_limit=1, max_size=32)
    blocks.launch(server_name=config.host, server_port=config.port, share=config.share, max_file_size="25mb")


if __name__ == "__main__":
    main()
