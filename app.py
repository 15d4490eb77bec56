"""Gradio demo of segdemo: upload an image, get its semantic segmentation (wiring only)."""

from __future__ import annotations

import argparse
import sys

# Before anything touches CUDA: on ZeroGPU the `spaces` package must be imported first (a no-op elsewhere).
from segdemo.hosting import gpu_function, on_zero_gpu  # isort: skip

import gradio as gr

from segdemo import engine_page, frontends
from segdemo import response as r
from segdemo import webapp as w
from segdemo.cli import setup_logging
from segdemo.errors import SegdemoError
from segdemo.gradio_parts import ImageUpload, LiveOverlay, hover_view
from segdemo.live import live_chart
from segdemo.model_source import PRESETS
from segdemo.timeline import summary_figure, timeline_figure
from segdemo.video import write_outputs

VIDEO_GPU_SECONDS = 180  # ZeroGPU: a 60 s clip at ≥ 2× real time, plus loading the session in a fresh worker
# The follow-up step (legend, hover view, colour mask, plots) starts once the overlay is painted, so its work never
# competes with the overlay's download and paint; it gives up waiting after 2 s.
AFTER_OVERLAY_PAINT = """(state) => new Promise(resolve => {
  const go = () => requestAnimationFrame(() => resolve(state));
  const timer = setTimeout(go, 2000);
  requestAnimationFrame(() => {
    const img = document.querySelector('#overlay img');
    if (!img || (img.complete && img.naturalWidth)) { clearTimeout(timer); return go(); }
    const done = () => { clearTimeout(timer); go(); };
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
  });
})"""
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
    p.add_argument("--allow-build", action="store_true", default=env.allow_build,
                   help="let visitors of a public app (non-loopback --host, --share, a Space) start engine builds")
    p.add_argument("--display-side", type=int, default=env.display_side,
                   help="long side of the pictures shown in the browser, px (default 1600; downloads are full size)")
    p.add_argument("--live-seconds", type=int, default=env.live_seconds,
                   help="a visitor's live webcam stream on a public app, seconds (default 120; 0: unlimited)")
    p.add_argument("--video-seconds", type=float, default=env.video_seconds,
                   help="longest video accepted, seconds (default 60; videos are also limited to 1080p)")
    p.add_argument("--video-mb", type=int, default=env.video_mb, help="largest video upload, MB (default 200)")
    p.add_argument("--max-batch", type=int, default=env.max_batch,
                   help="requests that reach the engine together share one call, up to this many (default 1: off; "
                        "16 suits a GPU serving many visitors)")
    p.add_argument("--front-ends", type=int, default=env.front_ends,
                   help="serve through this many copies of the app, each its own process and engine, behind one port "
                        "with a sticky proxy (default 1)")
    p.add_argument("--public", action="store_true", default=env.public,
                   help="treat the app as public though bound to loopback (it is behind a reverse proxy)")
    p.add_argument("--front-end-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    args = p.parse_args(argv)
    if not 1 <= args.front_ends <= frontends.MAX_FRONT_ENDS:
        p.error(f"--front-ends must be between 1 and {frontends.MAX_FRONT_ENDS}, not {args.front_ends}")
    if args.front_ends > 1 and on_zero_gpu():
        p.error("--front-ends above 1 does not work on ZeroGPU, where the spaces package needs the app's own process")
    if args.max_batch < 1:
        p.error(f"--max-batch must be at least 1, not {args.max_batch}")
    if args.display_side < 64:
        p.error(f"--display-side must be at least 64 px, not {args.display_side}")
    return w.AppConfig(**vars(args))


def build(demo: w.Demo) -> gr.Blocks:
    def segment(image, opacity, detailed):
        if not demo.ready:
            gr.Info("The model is still loading; your image runs as soon as it is ready.")
        try:
            result = demo.segment(image, detailed)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        response = r.respond(result, opacity)
        return str(response.overlay), str(response.classes), result.legend_json(), \
            r.timings(result, demo.session), response

    def details(response):
        session, result = demo.session, response.result
        if session is None:  # ZeroGPU: the session lives in the GPU worker; show what the result itself holds
            return (str(r.view_file(response)), r.hover_html(response), r.legend_html(result),
                    str(r.legend_file(response)), r.status_line(result), *(gr.skip(),) * 4, result.legend_json(),
                    gr.skip())
        summary = session.history.summary()
        return (str(r.view_file(response)), r.hover_html(response), r.legend_html(result),
                str(r.legend_file(response)), r.status_line(result),
                timeline_figure(session.load_spans.spans, result.spans.spans), summary_figure(summary),
                r.summary_rows(summary), r.trace_file(session, result, response.folder), result.legend_json(),
                r.timings(result, session))

    def reblend(response, opacity):
        if response is None:
            return gr.skip(), gr.skip()
        overlay = r.reblend(response, opacity)
        return str(overlay), r.hover_html(response, overlay)

    def full_overlay(response, opacity):
        if response is None:
            raise gr.Error("segment an image first: the full-size overlay is made from the last result")
        try:
            return str(r.full_overlay_file(response, opacity))
        except SegdemoError as exc:  # e.g. the upload it is decoded from again has been cleaned up
            raise gr.Error(str(exc)) from None

    def live(frame, opacity, request: gr.Request):
        try:
            done, stream = demo.live_frame(request.session_hash, frame, opacity)
        except SegdemoError as exc:  # still loading, or a frame that is not an image
            return gr.skip(), f"⚠️ {exc}", gr.skip()
        if done is None:  # replaced by a newer frame of the same stream before it reached the engine
            return gr.skip(), gr.skip(), gr.skip()
        return done.jpeg, w.live_readout(stream), live_chart(stream.stats) if stream.stats.chart_due() else gr.skip()

    def video(path, opacity, progress=gr.Progress()):
        def report(done, total):
            progress(done / total, desc=f"{done} / {total} frames")

        try:
            result = demo.segment_video(path, opacity, report)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        files = write_outputs(result, result.path.parent, demo.session.load_spans.spans)
        return (str(result.path), w.video_status(result), result.figure(), str(files["csv"]), str(files["json"]),
                str(files["profiling"]))

    def startup():
        return w.Demo.status_text(demo), gr.Timer(active=not demo.ready)

    def engine():
        return engine_page.engine_markdown(demo), engine_page.engine_rows(demo)

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
                    overlay = gr.Image(label="Overlay", type="filepath", elem_id="overlay")
                    status = gr.Markdown(elem_id="status")
                    legend = gr.HTML(label="Classes present", elem_id="legend")
            with gr.Row():
                mask = gr.Image(label="Colour mask", type="filepath", elem_id="mask")
                with gr.Column():
                    gr.Markdown("**Point at a class to highlight it** (or at its name below)")
                    hover = hover_view(elem_id="hover")
            with gr.Row():
                classes_file = gr.File(label="Class map, original size (palette PNG: pixel value = class id)")
                legend_dl = gr.File(label="Legend (JSON)")
                with gr.Column():
                    overlay_dl = gr.File(label="Overlay, original size (PNG)")
                    make_overlay = gr.Button("Make the full-size overlay PNG", size="sm")
            # The API's JSON values travel in components the page never draws (a 150-class JSON tree costs the
            # browser time before it paints the overlay); the accordion gets its copies in the follow-up step.
            legend_json = gr.JSON(label="legend", visible=False)
            timings_json = gr.JSON(label="timings (ms)", visible=False)
            with gr.Accordion("API values of the last request", open=False):
                legend_shown = gr.JSON(label="legend")
                timings_shown = gr.JSON(label="timings (ms)")
        with gr.Tab("Live"):
            gr.Markdown("Your webcam, segmented as it streams: press the camera's record button to start and stop. "
                        "The newest frame always wins — frames are never queued behind the engine."
                        + (f" Each visitor streams for up to {demo.config.live_time_limit} s."
                           if demo.config.live_time_limit else ""))
            with gr.Row():
                camera = ImageUpload(sources=["webcam"], streaming=True, type="filepath", label="Webcam",
                                     elem_id="camera")
                live_overlay = LiveOverlay(label="Live overlay", interactive=False, elem_id="live-overlay")
            live_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
            live_readout = gr.Markdown("Start the camera to see the frame rate and per-frame latency.",
                                       elem_id="live-readout")
        with gr.Tab("Video"):
            limits = demo.config.video_limits
            with gr.Row():
                with gr.Column():
                    video_in = gr.Video(label=f"Video ({limits.describe()})", sources=["upload"], include_audio=True,
                                        elem_id="video-in")
                    video_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                    video_run = gr.Button("Segment video", variant="primary")
                with gr.Column():
                    video_out = gr.Video(label="Segmented video (H.264 MP4)", interactive=False, elem_id="video-out")
                    video_md = gr.Markdown(elem_id="video-status")
            share_plot = gr.Plot(label="Share of each class over time", elem_id="share-chart")
            with gr.Row():
                shares_csv = gr.File(label="Class shares per frame (CSV)")
                shares_json = gr.File(label="Class shares per frame (JSON)")
                video_trace = gr.File(label="Trace of the job (Chrome trace JSON)")
        with gr.Tab("Profiling"):
            detailed = gr.Checkbox(label="Detailed: per-layer spans from the backend's profiler (slower requests)")
            timeline = gr.Plot(label="Timeline: session load and the last request", elem_id="timeline")
            summary_plot = gr.Plot(label="Per-span p50 / p95 over recent requests")
            summary_table = gr.Dataframe(headers=list(r.SUMMARY_COLUMNS),
                                         label="Per-span summary", interactive=False)
            trace_dl = gr.File(label="Trace (Chrome trace JSON — open in Perfetto UI or chrome://tracing)")
            live_plot = gr.Plot(label="Live: where each recent webcam frame's time goes (updated every second)",
                                elem_id="live-chart")
        with gr.Tab("Engine") as engine_tab:
            engine_md = gr.Markdown()
            ladder = gr.Dataframe(headers=["backend", "state", "reason"], label="Backend ladder", interactive=False)
            with gr.Row():
                build_precision = gr.Radio(["fp16", "fp32"], value="fp16", label="Engine precision")
                build_button = gr.Button("Build / rebuild engine", interactive=demo.config.builds_allowed)
            build_result = gr.Markdown()

        timer.tick(startup, None, [banner, timer], api_visibility="private")
        # On ZeroGPU these run in the GPU worker (spaces.GPU); elsewhere the decorator returns them unchanged.
        segment, build_engine = gpu_function(segment), gpu_function(build_engine)
        video = gpu_function(video, seconds=VIDEO_GPU_SECONDS)
        # Requests share the session's one engine slot (Session._engine); decoding and encoding run beside it, so
        # several requests are in flight while one at a time is in the engine.
        segment_event = run.click(segment, [image, opacity, detailed],
                                  [overlay, classes_file, legend_json, timings_json, state],
                                  api_name="segment", api_description=w.SEGMENT_API_DOC,
                                  concurrency_limit=demo.config.workers, concurrency_id="requests",
                                  show_progress="minimal", show_progress_on=[overlay])
        segment_event.success(details, [state], [mask, hover, legend, legend_dl, status, timeline, summary_plot,
                                                 summary_table, trace_dl, legend_shown, timings_shown],
                              js=AFTER_OVERLAY_PAINT,
                              api_visibility="private", concurrency_limit=demo.config.workers, show_progress="hidden")
        opacity.change(reblend, [state, opacity], [overlay, hover], api_visibility="private",
                       concurrency_limit=demo.config.workers, trigger_mode="always_last", show_progress="hidden")
        make_overlay.click(full_overlay, [state, opacity], [overlay_dl], api_name="full_overlay",
                           api_description=w.FULL_OVERLAY_API_DOC, concurrency_limit=demo.config.workers)
        # One stream per visitor: the browser sends a frame only when the last result is back and the server keeps
        # only the newest (latest frame wins, also across concurrent calls: segdemo.live); time-limited when public.
        camera.stream(live, [camera, live_opacity], [live_overlay, live_readout, live_plot],
                      stream_every=1 / w.LIVE_FPS, time_limit=demo.config.live_time_limit,
                      concurrency_limit=w.LIVE_VIEWERS, concurrency_id="live", api_visibility="private",
                      show_progress="hidden")
        video_run.click(video, [video_in, video_opacity],
                        [video_out, video_md, share_plot, shares_csv, shares_json, video_trace],
                        api_name="segment_video", api_description=w.VIDEO_API_DOC, concurrency_limit=1,
                        concurrency_id="video")
        engine_tab.select(engine, None, [engine_md, ladder], api_visibility="private")
        # Callable by API clients too (undocumented): Demo.build_engine refuses it on a public app unless allowed.
        build_button.click(build_engine, [build_precision], [build_result, engine_md, ladder],
                           api_name="build_engine", api_visibility="undocumented", concurrency_limit=1,
                           concurrency_id="build")
    return blocks


def create(config: w.AppConfig) -> gr.Blocks:
    """The app for `config`, its session loading in the background."""
    if config.front_end_index is not None:
        frontends.exit_with_supervisor()
    blocks = build(w.Demo(config).start())
    blocks.queue(max_size=config.queue_size)
    return blocks


def launch(config: w.AppConfig, blocks: gr.Blocks) -> None:
    blocks.launch(server_name=config.host, server_port=config.port, share=config.share,
                  max_file_size=f"{config.upload_mb}mb", css=CSS, footer_links=["api", "gradio"],
                  allowed_paths=[str(r.DOWNLOADS), str(w.VIDEOS)])


# Module level, so `gradio app.py` (reload mode, which re-imports this file and takes `demo`) and Spaces find the
# Blocks; `python app.py [options]` builds and launches it the same way — except with --front-ends above 1, where
# this process only supervises copies of the app behind one port and builds nothing itself.
setup_logging()
config = parse_args(sys.argv[1:])
if __name__ == "__main__" and config.front_ends > 1:
    sys.exit(frontends.serve(config, __file__))
demo = create(config)

if __name__ == "__main__":
    launch(config, demo)
