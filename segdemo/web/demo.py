"""What the Gradio app calls: session start-up in the background, request handling, plain return values."""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineUnavailableError, ModelNotFoundError, SegdemoError
from ..media.live import LiveFrame, LiveStream, LiveStreams
from ..media.video_io import probe
from ..media.video_job import Pace, VideoResult, segment_video
from ..model.source import DEFAULT_MODEL, preset_for
from ..pipeline import Segmentation, Session
from .admission import PixelBudget, inspect_image
from .config import AppConfig
from .examples import ExampleResults
from .hosting import on_zero_gpu
from .response import Response, full_overlay_file, respond
from .visitors import Visitor, VisitorFolders, fingerprint

log = logging.getLogger("segdemo.app")
ENGINE_DOWN = "the engine is not answering right now (it may be restarting) — try again in a few seconds"

SEGMENT_API_DOC = (
    "Segment one image. Inputs: image (file), opacity (0..1, overlay blend), detailed (bool, per-layer profiling). "
    "Returns: overlay JPEG at display size (long side at most the app's --display-side, default 1600 px; the "
    "full-size overlay PNG comes from /full_overlay); classes.png at the original size (EXIF orientation applied), "
    "a palette PNG whose pixel values are ADE20K class ids; legend JSON {model, backend, precision, random_weights, "
    "image_size, display_size, infer_ms, classes: [{id, name, color, pixels, share}] sorted by share}; timings JSON "
    "{init_ms, infer_ms, spans_ms: {span: ms}, backend, precision}."
)
FULL_OVERLAY_API_DOC = (
    "The overlay of this client's last /segment result at its original size, as a PNG, at the given opacity (0..1)."
)
VIDEO_API_DOC = (
    "Segment a video file (at most the app's --video-seconds, 1080p and --video-mb). Inputs: video (file), opacity "
    "(0..1). Returns: the overlay video (H.264 MP4 at display size, source frame rate), a status line, the plot of "
    "class shares over time, shares.csv (frame, time_s, one column per class present), shares.json and the job's "
    "Chrome trace."
)
# A request carrying any of these came through a proxy: whoever runs it, visitors other than the operator may be
# behind it, so the app treats itself as public from then on.
FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")
RUNTIME_DISTS = ("onnxruntime", "torch", "tensorrt", "tensorrt-cu13", "tensorrt-rtx-cu13", "transformers", "gradio")
PIXEL_BUDGET = 2  # full-size images (at the pixel limit) decoded and segmented at once; more wait their turn
LIVE_FPS = 30  # the browser sends at most this many webcam frames a second (one at a time: never ahead of results)
LIVE_VIEWERS = 4  # live streams served at once; more visitors wait in the queue for a free one




@dataclass
class Demo:
    """The app's one shared session, loaded in the background so the page is up at once."""

    config: AppConfig
    banner: str = ""
    error: str | None = None
    session: Session | None = None
    stage: str = "starting"
    _ready: threading.Event = field(default_factory=threading.Event)
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)
    _loading: threading.Lock = field(default_factory=threading.Lock)
    _started: bool = False
    live: LiveStreams = field(init=False)
    proxied: bool = False  # a request came through a proxy (forwarded headers): the app is public from then on
    visitors: VisitorFolders = field(init=False)
    pixels: PixelBudget = field(init=False)
    examples: ExampleResults = field(default_factory=ExampleResults)

    def __post_init__(self) -> None:
        self.visitors = VisitorFolders(self.config.session_seconds, self.config.max_sessions)
        self.live = LiveStreams(max_size=self.config.live_size)
        self.pixels = PixelBudget(PIXEL_BUDGET * self.config.image_limits.pixels)

    @property
    def build_dir(self) -> Path | None:
        return Path(self.config.build_dir) if self.config.build_dir else None

    @property
    def is_public(self) -> bool:
        return self.config.is_public or self.proxied

    @property
    def builds_refused(self) -> str | None:
        return self.config.refuse_builds(self.is_public)

    def saw(self, headers: Any) -> None:
        """Note a request's headers: one that came through a proxy makes the app public for the rest of its life."""
        if not self.proxied and headers is not None and any(name in headers for name in FORWARDED_HEADERS):
            self.proxied = True
            log.warning("a request came through a proxy (forwarded headers): treating the app as public from now "
                        "on%s", "" if self.config.allow_build else " — engine builds are refused (--allow-build)")

    def start(self) -> Demo:
        """Load the session in the background (on ZeroGPU: in the GPU worker, on its first request)."""
        if on_zero_gpu():
            self.stage = "waiting for the first request: on ZeroGPU the model loads in the GPU worker"
            return self
        self._begin_load()
        return self

    def _begin_load(self) -> None:
        with self._loading:
            if self._started:
                return
            self._started = True
        # Not a daemon: a process that exits mid-load (an imported app.py) waits for it instead of aborting inside
        # ONNX Runtime or torch ("terminate called without an active exception").
        threading.Thread(target=self._load, name="session-load", daemon=False).start()

    def _load(self) -> None:
        cfg = self.config
        try:
            self.stage = f"loading {cfg.model} (export and engine build happen once, then come from build/)"
            try:
                self.session = Session(cfg.model, cfg.backend, cfg.precision, self.build_dir, progress=self._progress,
                                       display_side=cfg.display_side, max_batch=cfg.max_batch)
            except ModelNotFoundError as exc:
                fallback = preset_for(cfg.model) if cfg.model == DEFAULT_MODEL else None
                if fallback is None:
                    raise
                # The README's plain `python app.py` must serve a working demo even offline.
                log.warning("%s; serving %s instead", exc, fallback)
                self.banner = (
                    f"⚠️ **Random weights.** The weights of `{cfg.model}` could not be fetched, so this demo runs "
                    f"the same architecture with random weights (`{fallback}`): the masks are meaningless. "
                    f"Fix: give this machine access to the Hugging Face hub, or start it with "
                    f"`python app.py --model /path/to/local/model`."
                )
                self.stage = f"loading {fallback} (random weights)"
                self.session = Session(fallback, cfg.backend, cfg.precision, self.build_dir, progress=self._progress,
                                       display_side=cfg.display_side, max_batch=cfg.max_batch)
            if self.session.random_weights and not self.banner:
                self.banner = (f"⚠️ **Random weights** (`{cfg.model}`): the masks are meaningless — a demo of the "
                               f"pipeline, not of the model. Start with a trained model to get real results.")
            if served_by := self.served_by():
                log.info("front end %d is served by %s", cfg.front_end_index, served_by)
            self.stage = "ready"
        except SegdemoError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 — the page must say why instead of hanging
            log.exception("session load failed")
            self.error = f"the model could not be loaded: {exc}"
        finally:
            self._ready.set()

    def served_by(self) -> str | None:
        """For a front end of `--front-ends` whose engine is a Triton server: that it is the shared engine tier, its
        address and model; None otherwise."""
        from ..backends.triton import TritonBackend

        backend = self.session.backend if self.session is not None else None
        if self.config.front_end_index is None or not isinstance(backend, TritonBackend):
            return None
        return (f"the engine tier shared by every front end of this app: {backend.endpoint}, model "
                f"{backend.served_spec} ({backend.variant} variant); this front end holds no copy of the model")

    def _progress(self, fraction: float, message: str) -> None:
        self.stage = f"building the engine: {message} ({fraction * 100:.0f} %)"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def build_engine(self, precision: str, progress: Callable[[float, str], None] | None = None) -> str:
        """(Re)build the TensorRT plan of the session's graph; a TensorRT session then reloads it."""
        from ..backends.tensorrt.engine_build import default_backend, ensure_engine

        if self.builds_refused:
            raise SegdemoError(self.builds_refused)
        session = self.wait(timeout=0)
        serving = session.backend.name if session.backend.name in ("tensorrt", "tensorrt-rtx") else None
        flavour = serving or default_backend()
        with self._reload_lock:
            engine = ensure_engine(session.fused_graph(), precision, flavour, self.build_dir, progress=progress,
                                   force=True)
            if serving:
                session.reload_backend(precision)
        where = (f"now serving it with {serving}" if serving else
                 f"this machine keeps serving with {session.backend.name}; the plan is for GPUs {flavour} supports")
        return (f"Built `{engine.plan.name}` ({engine.plan.stat().st_size / 1e6:.1f} MB, {precision}) in "
                f"{engine.seconds:.1f} s — {where}.")

    def status_text(self) -> str:
        """The start-up line shown above the app until the session is ready."""
        if self.error:
            return f"❌ **The model could not be loaded:** {html.escape(self.error)}"
        if not self.ready:
            return f"⏳ **Starting:** {self.stage}… Requests sent now wait for it."
        return self.banner

    def wait(self, timeout: float | None = None) -> Session:
        """The loaded session; raises SegdemoError if loading failed or is still running after timeout."""
        if not self._ready.wait(timeout):
            raise SegdemoError("the model is still loading (exporting and building the engine) — try again shortly")
        if self.session is None:
            raise SegdemoError(self.error or "the model failed to load")
        return self.session

    @contextmanager
    def _admitted(self, image: Any) -> Iterator[Session]:
        """Check an upload from its header (before anything decodes it), then hold its pixels of the budget while the
        block segments it on the loaded session; SegdemoError with a user-facing sentence on bad input."""
        if image is None:
            raise SegdemoError("no image was given — upload, paste or pick an example first")
        facts = inspect_image(image, self.config.image_limits)
        self._begin_load()  # already started, except in a ZeroGPU worker's first request
        session = self.wait(timeout=900)
        with self.pixels.hold(facts.pixels), _engine_answers():
            yield session

    def segment(self, image: Any, detailed: bool = False) -> Segmentation:
        """Segment one upload; raises SegdemoError with a user-facing sentence on bad input."""
        with self._admitted(image) as session:
            return session.segment(image, detailed=detailed)

    def answer(self, image: Any, opacity: float, detailed: bool, visitor: Visitor) -> Response:
        """Segment one upload and write the visitor's result files (replacing their older ones)."""
        with self._admitted(image) as session:  # the full-size class map is written before the pixels are let go
            result = session.segment(image, detailed=detailed)
            return respond(result, opacity, self.visitors.result_folder(visitor), sent=image)

    def example(self, path: str) -> Response:
        """An example photograph's result, shared by every visitor (made on its first click)."""
        with self._admitted(path) as session:
            return self.examples.get(session, path, self.visitors.root / "examples")

    def adopt_example(self, path: str, visitor: Visitor | None, request: Any) -> Visitor:
        """The request's visitor, whose last result is now the example's (for the follow-ups)."""
        visitor = self.visitor(visitor, request)
        self.visitors.folder(visitor)  # known from now on, like a visitor who segmented an upload
        visitor.last = self.example(path)
        return visitor

    def visitor(self, visitor: Visitor | None, request: Any) -> Visitor:
        """The request's visitor: the session's own, or a new one; refuses a session held by another client."""
        self.saw(getattr(request, "headers", None))
        owner = owner_of(request)
        if visitor is None:
            visitor = self.visitors.new_visitor(owner)
            self.visitors.bind(getattr(request, "session_hash", None), visitor)
            return visitor
        if visitor.owner != owner:
            raise SegdemoError("this session belongs to another browser — reload the page to start your own")
        return visitor

    def kept(self, visitor: Visitor | None, request: Any) -> Response:
        """The visitor's last result, for a follow-up (re-blend, full-size overlay); one sentence when there is none."""
        if visitor is None or visitor.last is None:
            raise SegdemoError("segment an image first: the full-size overlay is made from your last result (results "
                               f"are kept {self.config.session_minutes:g} minutes after your last request)")
        self.visitor(visitor, request)
        if not self.visitors.known(visitor):
            raise SegdemoError(f"your last result has expired (results are kept {self.config.session_minutes:g} "
                               "minutes after your last request) — segment the image again")
        return visitor.last

    def full_overlay(self, visitor: Visitor | None, request: Any, opacity: float) -> Path:
        """The visitor's last result as a full-size overlay PNG, made now (within the pixel budget)."""
        response = self.kept(visitor, request)
        height, width = response.info["image_size"]
        with self.pixels.hold(height * width):
            return full_overlay_file(response, opacity)

    def live_frame(self, key: str, image: Any, opacity: float) -> tuple[LiveFrame | None, LiveStream | None]:
        """One webcam frame of visitor `key`: (the frame, or None if a newer one replaced it; the visitor's stream).

        Raises SegdemoError while the model is still loading (a live frame never waits for it), and on ZeroGPU.
        """
        if on_zero_gpu():
            raise SegdemoError("live video is off on ZeroGPU hardware, where every call waits for a GPU to be "
                               "attached — run the Space on dedicated GPU hardware for it")
        stream = self.live.get(key, self.wait(timeout=0))
        if image is None:
            return None, stream
        facts = inspect_image(image, self.config.image_limits)
        with self.pixels.hold(facts.pixels):
            return stream.offer(image, opacity), stream

    def segment_video(self, path: Any, opacity: float, report: Callable[[float, str], None] | None = None,
                      visitor: Visitor | None = None) -> VideoResult:
        """Segment an uploaded video into a fresh folder of the visitor's, telling `report(fraction, line)` the
        frames done, frames/s and real-time factor as it goes; BadVideoError (one sentence) for unusable input."""
        if path is None:
            raise SegdemoError("no video was given — upload one first")
        info = probe(path, self.config.video_limits)  # bad input is refused before waiting for the model
        self._begin_load()  # already started, except in a ZeroGPU worker's first request
        session = self.wait(timeout=900)
        folder = self.visitors.result_folder(visitor or self.visitors.new_visitor(""), "v")
        with _engine_answers():
            return segment_video(session, path, folder / "overlay.mp4", opacity, self.config.video_limits,
                                 Pace(info.fps, report) if report else None)


@contextmanager
def _engine_answers() -> Iterator[None]:
    """An engine that did not answer becomes the visitor's sentence; the operator's, naming the server, is logged."""
    try:
        yield
    except EngineUnavailableError as exc:
        log.warning("a request found the engine down: %s", exc)
        raise SegdemoError(ENGINE_DOWN) from None


def owner_of(request: Any) -> str:
    """Who sent a Gradio request (its address and browser): follow-ups of a result must come from the same one."""
    client = getattr(request, "client", None)
    headers = getattr(request, "headers", None) or {}
    return fingerprint(getattr(client, "host", None), headers.get("user-agent"))


def live_readout(stream: LiveStream) -> str:
    """The Live tab's line: frame size, model and backend, fps, latency."""
    session, backend = stream.session, stream.session.backend
    return stream.stats.readout(f"{session.source.spec} on {backend.name} ({backend.device}, {backend.precision})")


def video_status(result: VideoResult) -> str:
    """One line: frames, size, rate, how fast it went, and the random-weights notice where it applies."""
    height, width = result.size
    line = (f"**{result.frames} frames** · {width}×{height} at {result.fps:.2f} fps · "
            f"{result.frames / result.fps:.1f} s of video in {result.seconds:.1f} s: "
            f"**{result.speed:.2f}× real time** · {result.facts.get('backend')} · H.264 MP4")
    if (result.info.height, result.info.width) != (height, width):
        line += f" (source {result.info.width}×{result.info.height})"
    if result.facts.get("random_weights"):
        line += " · ⚠️ random weights: masks are meaningless"
    return line
