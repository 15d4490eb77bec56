"""Gradio demo of segdemo: upload an image, get its semantic segmentation (wiring only)."""

from __future__ import annotations

import argparse

import gradio as gr

from segdemo import webapp as w
from segdemo.cli import setup_logging
from segdemo.errors import SegdemoError
from segdemo.gradio_parts import ImageUpload
from segdemo.model_source import PRESETS
from segdemo.timeline import summary_figure, timeline_figure

CSS = ".segdemo-legend td, .segdemo-legend th {padding: 2px 8px} .segdemo-legend {font-size: 0.92em}"


def parse_args(argv: list[str] | None = None) -> w.AppConfig:
    env = w.AppConfig.from_env()
    p = argparse.ArgumentParser(description="segdemo web app (options also read from SEGDEMO_* variables)")
    p.add_argument("--model", default=env.model, help=f"hub id, local directory or {', '.join(PRESETS)}")
    p.add_argument("--backend", default=env.backend, help="auto or a backend name")
    p.add_argument("--precision", default=env.precision, choices=("auto", "fp16", "fp32"),
                   help="auto: fp16 on GPU backends, fp32 on the CPU")
    p.add_argument("--build-dir", default=env.build_dir, help="artifact cache (default build/)")
    p.add_argument("--host", default=env.host, help="bind address (default 127.0.0.1; 0.0.0.0 to serve a network)")
    p.add_argument("--port", type=int, default=env.port)
    p.add_argument("--share", action="store_true", default=env.share, help="create a public share link")
    return w.AppConfig(**vars(p.parse_args(argv)))


def build(demo: w.Demo) -> gr.Blocks:
    def segment(image, opacity, detailed):
        if not demo.ready:
            gr.Info("The model is still loading; your image runs as soon as it is ready.")
        try:
            result = demo.segment(image, detailed)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        files = w.result_files(result, opacity)
        return files["overlay"], files["classes"], result.legend_json(), w.timings(result, demo.session), \
            (result, files)

    def details(state):
        result, files = state
        session = demo.session
        summary = session.history.summary()
        annotated = gr.AnnotatedImage(w.annotations(result), color_map=w.annotation_colours(result))
        return (result.mask, annotated, w.legend_html(result), files["overlay"], files["legend"],
                w.status_line(result), timeline_figure(session.load_spans.spans, result.spans.spans),
                summary_figure(summary), w.summary_rows(summary), w.trace_file(session, result, files["legend"]))

    def reblend(state, opacity):
        if state is None:
            return gr.skip(), gr.skip()
        overlay = w.overlay_file(state[0].overlay(opacity))
        return overlay, overlay

    def startup():
        return w.Demo.status_text(demo), gr.Timer(active=not demo.ready)

    def engine():
        return w.engine_markdown(demo), w.engine_rows(demo)

    def build_engine(precision, progress=gr.Progress()):
        try:
            message = demo.build_engine(precision, lambda fraction, text: progress(fraction, desc=text))
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        return message, *engine()

    # delete_cache: Gradio's copies of results older than an hour are removed every hour (long-running Spaces).
    with gr.Blocks(title="segdemo — SegFormer semantic segmentation", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown("# segdemo — SegFormer semantic segmentation\nADE20K's 150 classes, one fused graph per model.")
        banner = gr.Markdown(demo.status_text(), elem_id="banner")
        timer = gr.Timer(1.0)
        state = gr.State()
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = ImageUpload(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"])
                    run = gr.Button("Segment", variant="primary")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                    gr.Examples(w.example_files(demo.build), inputs=[image], label="Example photographs")
                with gr.Column(scale=1):
                    overlay = gr.Image(label="Overlay", type="filepath", format="png", elem_id="overlay")
                    status = gr.Markdown(elem_id="status")
                    legend = gr.HTML(label="Classes present", elem_id="legend")
            with gr.Row():
                mask = gr.Image(label="Colour mask", type="numpy", format="png")
                annotated = gr.AnnotatedImage(label="Hover or click a class to highlight it")
            with gr.Row():
                classes_file = gr.File(label="Class map (palette PNG: pixel value = class id)")
                overlay_dl = gr.File(label="Overlay (PNG)")
                legend_dl = gr.File(label="Legend (JSON)")
            with gr.Accordion("API values of the last request", open=False):
                legend_json = gr.JSON(label="legend")
                timings_json = gr.JSON(label="timings (ms)")
        with gr.Tab("Profiling"):
            detailed = gr.Checkbox(label="Detailed: per-layer spans from the backend's profiler (slower requests)")
            timeline = gr.Plot(label="Timeline: session load and the last request", elem_id="timeline")
            summary_plot = gr.Plot(label="Per-span p50 / p95 over recent requests")
            summary_table = gr.Dataframe(headers=list(w.SUMMARY_COLUMNS),
                                         label="Per-span summary", interactive=False)
            trace_dl = gr.File(label="Trace (Chrome trace JSON — open in Perfetto UI or chrome://tracing)")
        with gr.Tab("Engine") as engine_tab:
            engine_md = gr.Markdown()
            ladder = gr.Dataframe(headers=["backend", "state", "reason"], label="Backend ladder", interactive=False)
            with gr.Row():
                build_precision = gr.Radio(["fp16", "fp32"], value="fp16", label="Engine precision")
                build_button = gr.Button("Build / rebuild engine")
            build_result = gr.Markdown()

        timer.tick(startup, None, [banner, timer], api_visibility="private")
        segment_event = run.click(segment, [image, opacity, detailed],
                                  [overlay, classes_file, legend_json, timings_json, state],
                                  api_name="segment", api_description=w.SEGMENT_API_DOC,
                                  concurrency_limit=1, concurrency_id="inference")
        segment_event.then(details, [state], [mask, annotated, legend, overlay_dl, legend_dl, status, timeline,
                                              summary_plot, summary_table, trace_dl], api_visibility="private")
        opacity.change(reblend, [state, opacity], [overlay, overlay_dl], api_visibility="private",
                       concurrency_limit=4, trigger_mode="always_last", show_progress="hidden")
        engine_tab.select(engine, None, [engine_md, ladder], api_visibility="private")
        build_button.click(build_engine, [build_precision], [build_result, engine_md, ladder],
                           api_visibility="private", concurrency_limit=1, concurrency_id="build")
    return blocks


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    config = parse_args(argv)
    demo = w.Demo(config).start()
    blocks = build(demo)
    blocks.queue(max_size=16)
    blocks.launch(server_name=config.host, server_port=config.port, share=config.share, max_file_size="25mb",
                  css=CSS, footer_links=["api", "gradio"])


if __name__ == "__main__":
    main()
