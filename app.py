"""Gradio demo of segdemo: upload an image, get its semantic segmentation (wiring only)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

# Before anything touches CUDA: on ZeroGPU the `spaces` package must be imported first (a no-op elsewhere).
from segdemo.web.hosting import gpu_function  # isort: skip

import gradio as gr
from starlette.middleware import Middleware

from segdemo.cli import setup_logging
from segdemo.commands.app_options import parse_app_args
from segdemo.errors import SegdemoError
from segdemo.media.live import live_chart
from segdemo.media.video_job import write_outputs
from segdemo.profiling.timeline import summary_figure, timeline_figure
from segdemo.serving import frontends
from segdemo.web import engine_page, mcp_tool
from segdemo.web.bodylimit import BodyLimit
from segdemo.web.components import ImageUpload, LiveOverlay, live_camera
from segdemo.web.config import AppConfig
from segdemo.web.demo import (
    FULL_OVERLAY_API_DOC,
    LIVE_FPS,
    LIVE_VIEWERS,
    SEGMENT_API_DOC,
    VIDEO_API_DOC,
    Demo,
    live_readout,
    video_status,
)
from segdemo.web.examples import EXAMPLE_OPACITY, example_files, examples_cache_folder
from segdemo.web.page import CSS, PAGE_JS, theme
from segdemo.web.response import SUMMARY_COLUMNS, reblend, status_line, summary_rows, timings, trace_file
from segdemo.web.view import PAINT_JS, SAVE_JS, downloads_html, result_view, view_html

VIDEO_GPU_SECONDS = 180  # ZeroGPU: a 60 s clip at ≥ 2× real time, plus loading the session in a fresh worker
@dataclass
class ProfilingPanel:
    """The Profiling tab's components: made first (unrendered), so the Segment and Live tabs can fill them."""

    timeline: gr.Plot
    summary_plot: gr.Plot
    summary_table: gr.Dataframe
    trace: gr.File
    live_plot: gr.Plot

    @classmethod
    def create(cls) -> ProfilingPanel:
        return cls(
            gr.Plot(label="Timeline: session load and the last request", elem_id="timeline", render=False),
            gr.Plot(label="Per-span p50 / p95 over recent requests", render=False),
            gr.Dataframe(headers=list(SUMMARY_COLUMNS), label="Per-span summary", interactive=False, render=False),
            gr.File(label="Trace (Chrome trace JSON — open in Perfetto UI or chrome://tracing)", render=False),
            gr.Plot(label="Live: where each recent webcam frame's time goes (updated every second)",
                    elem_id="live-chart", render=False))

    def render(self) -> None:
        for component in (self.timeline, self.summary_plot, self.summary_table, self.trace, self.live_plot):
            component.render()


def build(served: Demo) -> gr.Blocks:
    # delete_cache: Gradio's copies of results older than an hour are removed every hour (long-running Spaces).
    with gr.Blocks(title="segdemo — SegFormer semantic segmentation", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown("# segdemo — semantic segmentation in your browser\nEvery pixel of a photo gets one of 150 "
                    "everyday classes (wall, sky, person, car, tree…) from a SegFormer model.", elem_id="title")
        banner = gr.Markdown(served.status_text(), elem_id="banner")
        timer = gr.Timer(1.0)

        def startup():
            return {banner: served.status_text(), timer: gr.Timer(active=not served.ready)}

        timer.tick(startup, None, [banner, timer], api_visibility="private")
        # A visitor: their folder's key and last result (files on disk, no pixels); it and the files expire.
        state = gr.State(time_to_live=served.config.session_seconds, delete_callback=served.visitors.release)
        profiling = ProfilingPanel.create()
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Segment"):
                segment_tab(served, state, profiling)
            with gr.Tab("Live"):
                live_tab(served, profiling)
            with gr.Tab("Video"):
                video_tab(served, state)
            with gr.Tab("Profiling"):
                profiling.render()
            with gr.Tab("Engine") as tab:
                engine_tab(served, tab)

        def ended(request: gr.Request) -> None:  # the tab closed or reloaded: the visitor's files go now
            served.visitors.end_session(request.session_hash)

        blocks.unload(ended)
    return blocks


def segment_tab(served: Demo, state: gr.State, profiling: ProfilingPanel) -> None:
    """Upload or pick an example → one picture to explore (the API's /segment), the follow-up step, downloads."""
    # What the API answers with travels in components the page never draws: the view paints the overlay itself.
    overlay = gr.Image(label="Overlay", type="filepath", visible=False)
    classes_file = gr.File(label="Class map, original size (palette PNG: pixel value = class id)", visible=False)
    legend_json = gr.JSON(label="Legend", visible=False)
    timings_json = gr.JSON(label="Timings (ms)", visible=False)
    overlay_dl = gr.File(label="Overlay, original size (PNG)", visible=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            image = ImageUpload(type="filepath", label="Your image", sources=["upload", "clipboard", "webcam"],
                                height=240, render=False)
            image.max_bytes = served.config.image_limits.bytes
            files = example_files(served.build_dir)
            examples = gr.Examples(files, inputs=[image], label="Examples: click one to segment it", elem_id="examples",
                                   examples_per_page=len(files), cache_examples=True, cache_mode="lazy",
                                   fn=gpu_function(lambda path: example_answer(path)), api_visibility="private",
                                   outputs=[overlay, classes_file, legend_json, timings_json])
            image.render()
            run = gr.Button("Segment", variant="primary")
            opacity = gr.Slider(0, 1, value=EXAMPLE_OPACITY, step=0.05, label="Overlay opacity")
            detailed = gr.Checkbox(label="Detailed profiling (per-layer spans on the Profiling tab; slower)")
        with gr.Column(scale=3, min_width=300):
            view = result_view(elem_id="overlay", label="Result")
            status = gr.Markdown(elem_id="status")
            with gr.Row(visible=False, elem_id="downloads-row") as downloads_row:
                downloads = gr.HTML(elem_id="downloads", min_width=280)
                make_overlay = gr.Button("Full-size overlay (PNG)", size="sm", scale=0, min_width=190)

    def answer_values(response):
        return {overlay: str(response.overlay), classes_file: str(response.classes),
                legend_json: response.legend_json(), timings_json: timings(response, served.session)}

    def example_answer(path):  # what Gradio caches for an example (on its first click)
        try:
            return answer_values(served.example(path))
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None

    def segment(image_file, opacity_value, detailed_value, visitor, request: gr.Request):
        if not served.ready:
            gr.Info("The model is still loading; your image runs as soon as it is ready.")
        try:
            visitor = served.visitor(visitor, request)
            response = served.answer(image_file, opacity_value, detailed_value, visitor)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        visitor.last = response
        return {**answer_values(response), state: visitor}

    def details(visitor):
        session, response = served.session, visitor.last
        shown = {view: view_html(response), status: status_line(response), downloads: downloads_html(response),
                 downloads_row: gr.Row(visible=True)}
        if session is None:  # ZeroGPU: the session lives in the GPU worker; show what the result itself holds
            return shown
        summary = session.history.summary()
        return {**shown, profiling.timeline: timeline_figure(session.load_spans.spans, response.spans.spans),
                profiling.summary_plot: summary_figure(summary), profiling.summary_table: summary_rows(summary),
                profiling.trace: trace_file(session, response)}

    def example_details(example, opacity_value, visitor, request: gr.Request):
        try:
            visitor = served.adopt_example(files[example[0]], visitor, request)
            shown = {**details(visitor), state: visitor}
            if round(opacity_value, 2) != EXAMPLE_OPACITY:  # the cached answer is at the default opacity
                shown[overlay] = str(reblend(visitor.last, opacity_value))
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        return shown

    def change_opacity(visitor, opacity_value, request: gr.Request):
        if visitor is None or visitor.last is None:
            return {}
        try:
            return {overlay: str(reblend(served.kept(visitor, request), opacity_value))}
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None

    def full_overlay(visitor, opacity_value, request: gr.Request):
        try:
            return str(served.full_overlay(visitor, request, opacity_value))
        except SegdemoError as exc:  # none yet, expired, or another client's session
            raise gr.Error(str(exc)) from None

    detail_outputs = [view, status, downloads, downloads_row, profiling.timeline, profiling.summary_plot,
                      profiling.summary_table, profiling.trace]
    # On ZeroGPU this runs in the GPU worker (spaces.GPU); elsewhere the decorator returns it unchanged. Requests share
    # the session's one engine slot; decoding and encoding run beside it, so several are in flight at once.
    segment_event = run.click(gpu_function(segment), [image, opacity, detailed, state],
                              [overlay, classes_file, legend_json, timings_json, state],
                              api_name="segment", api_description=SEGMENT_API_DOC,
                              concurrency_limit=served.config.workers, concurrency_id="requests",
                              show_progress="minimal", show_progress_on=[view])
    # The follow-up step (view, status, downloads, plots) starts once the overlay is painted, so its work never
    # competes with the overlay's download and paint.
    segment_event.success(None, [overlay], None, js=PAINT_JS, api_visibility="private").success(
        details, [state], detail_outputs, api_visibility="private", concurrency_limit=served.config.workers,
        show_progress="hidden")
    # An example: Gradio loads (or makes, on its first click) the cached answer, then the view adopts the shared result.
    examples.cache_event.success(None, [overlay], None, js=PAINT_JS, api_visibility="private").success(
        example_details, [examples.dataset, opacity, state], [*detail_outputs, overlay, state],
        api_visibility="private", concurrency_limit=served.config.workers, concurrency_id="requests",
        show_progress="hidden",
    ).success(None, [overlay], None, js=PAINT_JS, api_visibility="private")
    opacity.change(change_opacity, [state, opacity], [overlay], api_name="reblend", api_visibility="private",
                   concurrency_limit=served.config.workers, trigger_mode="always_last", show_progress="hidden",
                   ).success(None, [overlay], None, js=PAINT_JS, api_visibility="private")
    make_overlay.click(full_overlay, [state, opacity], [overlay_dl], api_name="full_overlay",
                       api_description=FULL_OVERLAY_API_DOC, concurrency_limit=served.config.workers,
                       ).success(None, [overlay_dl], None, js=SAVE_JS, api_visibility="private")


def live_tab(served: Demo, profiling: ProfilingPanel) -> None:
    """The visitor's webcam, segmented as it streams (latest frame wins)."""
    limit, size = served.config.live_time_limit, served.config.live_size
    gr.Markdown("Your webcam, segmented as it streams: press the camera's record button to start and stop. The newest "
                f"frame always wins — frames are never queued behind the engine. Frames are {size.width}×{size.height}"
                " at most." + (f" Each visitor streams for up to {limit} s." if limit else ""))
    with gr.Row():
        camera = live_camera(served.config, label="Webcam", elem_id="camera")
        live_overlay = LiveOverlay(label="Live overlay", interactive=False, elem_id="live-overlay")
    live_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
    readout = gr.Markdown("Start the camera to see the frame rate and per-frame latency.", elem_id="live-readout")

    def live(frame, opacity_value, request: gr.Request):
        try:
            done, stream = served.live_frame(request.session_hash, frame, opacity_value)
        except SegdemoError as exc:  # still loading, or a frame that is not an image
            return {readout: f"⚠️ {exc}"}
        if done is None:  # replaced by a newer frame of the same stream before it reached the engine
            return {}
        shown = {live_overlay: done.jpeg, readout: live_readout(stream)}
        return {**shown, profiling.live_plot: live_chart(stream.stats)} if stream.stats.chart_due() else shown

    # One stream per visitor: the browser sends a frame only when the last result is back and the server keeps only
    # the newest (latest frame wins, across concurrent calls too: media.live); time-limited when public.
    camera.stream(live, [camera, live_opacity], [live_overlay, readout, profiling.live_plot],
                  stream_every=1 / LIVE_FPS, time_limit=limit, concurrency_limit=LIVE_VIEWERS,
                  concurrency_id="live", api_visibility="private", show_progress="hidden")


def video_tab(served: Demo, state: gr.State) -> None:
    """A video file → the overlay video, class shares over time and the job's trace (the API's /segment_video)."""
    with gr.Row():
        with gr.Column():
            video_in = gr.Video(label=f"Video ({served.config.video_limits.describe()})", sources=["upload"],
                                include_audio=True, elem_id="video-in")
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

    def video(path, opacity_value, visitor, request: gr.Request, progress=gr.Progress()):
        def report(fraction, line):  # frames done, frames/s and the real-time factor, as the job goes
            progress(fraction, desc=line)

        try:
            visitor = served.visitor(visitor, request)
            result = served.segment_video(path, opacity_value, report, visitor)
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        files = write_outputs(result, result.path.parent, served.session.load_spans.spans)
        return {video_out: str(result.path), video_md: video_status(result), share_plot: result.figure(),
                shares_csv: str(files["csv"]), shares_json: str(files["json"]), video_trace: str(files["profiling"]),
                state: visitor}

    video_run.click(gpu_function(video, seconds=VIDEO_GPU_SECONDS), [video_in, video_opacity, state],
                    [video_out, video_md, share_plot, shares_csv, shares_json, video_trace, state],
                    api_name="segment_video", api_description=VIDEO_API_DOC, concurrency_limit=1,
                    concurrency_id="video")


def engine_tab(served: Demo, tab: gr.Tab) -> None:
    """What serves the requests (model, backend, ladder) and engine builds, offered where a TensorRT flavour runs."""
    engine_md = gr.Markdown(elem_id="engine")
    with gr.Row(visible=False) as build_controls:  # shown once the ladder says a TensorRT flavour can run here
        precision = gr.Radio(["fp16", "fp32"], value="fp16", label="Engine precision")
        build_button = gr.Button("Build / rebuild engine", interactive=not served.builds_refused)
    build_result = gr.Markdown()
    with gr.Accordion("Backends tried, in order", open=False):
        ladder = gr.Dataframe(headers=["backend", "state", "reason"], label="Backend ladder", interactive=False)

    def engine(request: gr.Request):
        served.saw(request.headers)
        view = engine_page.engine_view(served)
        return {engine_md: view.markdown, ladder: view.rows, build_controls: gr.update(visible=view.buildable),
                build_button: gr.update(interactive=not served.builds_refused)}

    def build_engine(precision_value, request: gr.Request, progress=gr.Progress()):
        served.saw(request.headers)
        try:
            message = served.build_engine(precision_value, lambda fraction, text: progress(fraction, desc=text))
        except SegdemoError as exc:
            raise gr.Error(str(exc)) from None
        view = engine_page.engine_view(served)
        return {build_result: message, engine_md: view.markdown, ladder: view.rows}

    tab.select(engine, None, [engine_md, ladder, build_controls, build_button], api_visibility="private")
    # Callable by API clients too (undocumented): Demo.build_engine refuses it on a public app unless allowed.
    build_button.click(gpu_function(build_engine), [precision], [build_result, engine_md, ladder],
                       api_name="build_engine", api_visibility="undocumented", concurrency_limit=1,
                       concurrency_id="build")


def create(config: AppConfig) -> tuple[gr.Blocks, Demo]:
    """The app for `config` and the demo it serves, its session loading in the background."""
    if config.front_end_index is not None:
        frontends.exit_with_supervisor()
    served = Demo(config).start()
    # Gradio caches the examples' answers on their first click, in a folder per model set-up (the operator's
    # GRADIO_EXAMPLES_CACHE wins).
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(examples_cache_folder(
        served.build_dir, config.model, config.backend, config.precision, config.display_side)))
    blocks = mcp_tool.add_tool(build(served), served)  # with --mcp, the MCP tool's endpoint
    blocks.queue(max_size=config.queue_size)
    return blocks, served


def launch(config: AppConfig, blocks: gr.Blocks, served: Demo) -> None:
    # Bodies are bounded before Gradio reads them (an image inline as a data: URL in JSON had no limit); only the
    # visitors' folders are served besides Gradio's own cache; sessions are capped (their state is small).
    limit = Middleware(BodyLimit, limit=config.body_bytes, upload_limit=config.upload_mb * 2**20)
    logging.getLogger("segdemo.app").info("visitors' files in %s (each removed when its visitor leaves or after %g "
                                          "minutes idle; all at exit)", served.visitors.root, config.session_minutes)
    # SIGTERM (a supervisor, a container stop) ends the app as Ctrl-C does: the server closes and the visitors' files
    # are removed, instead of the process dying where it stands.
    signal.signal(signal.SIGTERM, _interrupt)
    blocks.launch(server_name=config.host, server_port=config.port, share=config.share,
                  max_file_size=f"{config.upload_mb}mb", css=CSS, js=PAGE_JS, theme=theme(),
                  footer_links=["api", "gradio"],
                  allowed_paths=[str(served.visitors.root)], state_session_capacity=config.max_sessions,
                  app_kwargs={"middleware": [limit], "lifespan": mcp_tool.tools_only(blocks)}, mcp_server=config.mcp)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# `python app.py [options]` builds and launches the app — or, with --front-ends above 1, only supervises copies of it
# behind one port. Imported (`gradio app.py`'s reload mode, which takes `demo`), it builds the Blocks from SEGDEMO_*
# variables alone: the importer's command line is not the app's.
setup_logging()
if __name__ == "__main__":
    config = parse_app_args(sys.argv[1:])
    if config.front_ends > 1:
        sys.exit(frontends.serve(config, __file__))
    demo, served = create(config)
    launch(config, demo, served)
else:
    config = parse_app_args([])
    demo, served = create(config)
