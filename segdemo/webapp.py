"""What the Gradio app calls: session start-up in the background, request handling, plain return values."""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .artifacts import build_dir
from .errors import ModelNotFoundError, SegdemoError
from .hosting import on_zero_gpu
from .live import LiveFrame, LiveStream, LiveStreams
from .model_source import DEFAULT_MODEL, preset_for
from .pipeline import Segmentation, Session
from .video import Progress, VideoResult, segment_video
from .videofile import APP_LIMITS, VideoLimits, probe
from .visuals import DISPLAY_SIDE

log = logging.getLogger("segdemo.app")

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
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BUILDS_OFF = ("engine builds are turned off on this public app (each takes minutes of the whole machine and swaps "
              "the engine under other visitors) — its operator can allow them with --allow-build or "
              "SEGDEMO_ALLOW_BUILD=1")
BUILDS_SPLIT = ("engine builds are turned off with --front-ends above 1, because a build would swap the engine of only "
                "the front end that got the request — build it with `python -m segdemo build` and restart the app")
RUNTIME_DISTS = ("onnxruntime", "torch", "tensorrt", "tensorrt-cu13", "tensorrt-rtx-cu13", "transformers", "gradio")
EXAMPLE_PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")  # photographs bundled with scikit-image
QUEUE_MIN = 64  # Gradio's queue, whatever --max-batch: 32 visitors at once must never be told the app is busy
IMAGE_MB = 25  # image uploads (Gradio's own limit is raised for videos)
LIVE_SECONDS = 120  # default per-visitor live stream on a public app
LIVE_FPS = 30  # the browser sends at most this many webcam frames a second (one at a time: never ahead of results)
LIVE_VIEWERS = 4  # live streams served at once; more visitors wait in the queue for a free one
VIDEOS = Path(tempfile.mkdtemp(prefix="segdemo-videos-"))  # segmented videos (served: launch(allowed_paths=…))
KEEP_VIDEOS = 8  # Gradio copies results into its own cache, so only the newest few folders are kept here


@dataclass
class AppConfig:
    """Options of `python app.py`, each also settable through a SEGDEMO_* environment variable."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    precision: str = "auto"
    build_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    display_side: int = DISPLAY_SIDE
    allow_build: bool = False  # engine builds from the page/API on a public app (always allowed on loopback)
    live_seconds: int = LIVE_SECONDS  # a visitor's live stream on a public app (Gradio's time_limit); 0: no limit
    video_seconds: float = APP_LIMITS.seconds
    video_mb: int = APP_LIMITS.bytes // 2**20
    max_batch: int = 1  # > 1: requests reaching the engine together share one call (Session's batcher)
    front_ends: int = 1  # > 1: `python app.py` supervises that many copies of the app behind one port (frontends)
    public: bool = False  # public though bound to loopback: behind a reverse proxy (ours with --front-ends, or yours)
    front_end_index: int | None = None  # set by the supervisor in each copy it starts; None when serving alone

    @property
    def workers(self) -> int:
        """Requests in flight at once (decoding, in the engine or its batch, encoding): enough to fill a batch."""
        return max(4, 2 * self.max_batch)

    @property
    def queue_size(self) -> int:
        """Events Gradio keeps waiting beyond those in flight; more are told the app is busy.

        At least QUEUE_MIN, so 32 visitors at once (each with a request and its follow-up step) all wait their turn.
        """
        return max(QUEUE_MIN, 4 * self.workers)

    @property
    def is_public(self) -> bool:
        """Whether visitors other than the operator reach this app: a non-loopback bind, a share link, a Space, or
        --public (loopback behind a reverse proxy)."""
        return self.public or self.host not in LOOPBACK or self.share or bool(os.environ.get("SPACE_ID"))

    @property
    def builds_refused(self) -> str | None:
        """Why engine builds from the page and API are refused here, or None where they are allowed."""
        if self.front_end_index is not None:
            return BUILDS_SPLIT
        return BUILDS_OFF if self.is_public and not self.allow_build else None

    @property
    def builds_allowed(self) -> bool:
        return self.builds_refused is None

    @property
    def live_time_limit(self) -> int | None:
        """Seconds of live stream per visitor: limited on a public app only (and not at all with 0)."""
        return self.live_seconds if self.is_public and self.live_seconds > 0 else None

    @property
    def video_limits(self) -> VideoLimits:
        return replace(APP_LIMITS, seconds=self.video_seconds, bytes=self.video_mb * 2**20)

    @property
    def upload_mb(self) -> int:
        """Gradio's upload limit: images are held to IMAGE_MB by Demo.segment, videos need more."""
        return max(IMAGE_MB, self.video_mb)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AppConfig:
        env = os.environ if environ is None else environ
        return cls(
            model=env.get("SEGDEMO_MODEL", cls.model),
            backend=env.get("SEGDEMO_BACKEND", cls.backend),
            precision=env.get("SEGDEMO_PRECISION", cls.precision),
            build_dir=env.get("SEGDEMO_BUILD_DIR") or None,
            host=env.get("SEGDEMO_HOST", env.get("GRADIO_SERVER_NAME", cls.host)),
            port=int(env.get("SEGDEMO_PORT", env.get("GRADIO_SERVER_PORT", cls.port))),
            share=env.get("SEGDEMO_SHARE", "").lower() in ("1", "true", "yes"),
            display_side=int(env.get("SEGDEMO_DISPLAY_SIDE", cls.display_side)),
            allow_build=env.get("SEGDEMO_ALLOW_BUILD", "").lower() in ("1", "true", "yes"),
            live_seconds=int(env.get("SEGDEMO_LIVE_SECONDS", cls.live_seconds)),
            video_seconds=float(env.get("SEGDEMO_VIDEO_SECONDS", cls.video_seconds)),
            video_mb=int(env.get("SEGDEMO_VIDEO_MB", cls.video_mb)),
            max_batch=int(env.get("SEGDEMO_MAX_BATCH", cls.max_batch)),
            front_ends=int(env.get("SEGDEMO_FRONT_ENDS", cls.front_ends)),
            public=env.get("SEGDEMO_PUBLIC", "").lower() in ("1", "true", "yes"),
        )


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
    live: LiveStreams = field(default_factory=LiveStreams)

    @property
    def build(self) -> Path | None:
        return Path(self.config.build_dir) if self.config.build_dir else None

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
                self.session = Session(cfg.model, cfg.backend, cfg.precision, self.build, progress=self._progress,
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
                self.session = Session(fallback, cfg.backend, cfg.precision, self.build, progress=self._progress,
                                       display_side=cfg.display_side, max_batch=cfg.max_batch)
            if self.session.random_weights and not self.banner:
                self.banner = (f"⚠️ **Random weights** (`{cfg.model}`): the masks are meaningless — a demo of the "
                               f"pipeline, not of the model. Start with a trained model to get real results.")
            self.stage = "ready"
        except SegdemoError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 — the page must say why instead of hanging
            log.exception("session load failed")
            self.error = f"the model could not be loaded: {exc}"
        finally:
            self._ready.set()

    def _progress(self, fraction: float, message: str) -> None:
        self.stage = f"building the engine: {message} ({fraction * 100:.0f} %)"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def build_engine(self, precision: str, progress: Callable[[float, str], None] | None = None) -> str:
        """(Re)build the TensorRT plan of the session's graph; a TensorRT session then reloads it."""
        from .engine_build import default_backend, ensure_engine

        if self.config.builds_refused:
            raise SegdemoError(self.config.builds_refused)
        session = self.wait(timeout=0)
        serving = session.backend.name if session.backend.name in ("tensorrt", "tensorrt-rtx") else None
        flavour = serving or default_backend()
        with self._reload_lock:
            engine = ensure_engine(session.onnx_file, precision, flavour, self.build, progress=progress, force=True)
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

    def segment(self, image: Any, detailed: bool = False) -> Segmentation:
        """Segment one upload; raises SegdemoError with a user-facing sentence on bad input."""
        if image is None:
            raise SegdemoError("no image was given — upload, paste or pick an example first")
        if isinstance(image, (str, Path)) and Path(image).is_file() and Path(image).stat().st_size > IMAGE_MB * 2**20:
            raise SegdemoError(f"the image is {Path(image).stat().st_size / 2**20:.0f} MB; uploads are limited to "
                               f"{IMAGE_MB} MB")
        self._begin_load()  # already started, except in a ZeroGPU worker's first request
        return self.wait(timeout=900).segment(image, detailed=detailed)

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
        return stream.offer(image, opacity), stream

    def segment_video(self, path: Any, opacity: float, progress: Progress | None = None) -> VideoResult:
        """Segment an uploaded video into a fresh folder; BadVideoError (one sentence) for unusable input."""
        if path is None:
            raise SegdemoError("no video was given — upload one first")
        probe(path, self.config.video_limits)  # bad input is refused before waiting for the model
        self._begin_load()  # already started, except in a ZeroGPU worker's first request
        session = self.wait(timeout=900)
        folder = fresh_video_folder()
        return segment_video(session, path, folder / "overlay.mp4", opacity, self.config.video_limits, progress)


def live_readout(stream: LiveStream) -> str:
    session = stream.session
    return stream.stats.readout(f"{session.backend.name} ({session.backend.device}, {session.backend.precision})")


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


def fresh_video_folder() -> Path:
    """A new folder for one segmented video; the oldest beyond KEEP_VIDEOS are removed."""
    folder = Path(tempfile.mkdtemp(dir=VIDEOS))
    for old in sorted(VIDEOS.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_VIDEOS]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def example_files(folder: Path | None = None) -> list[str]:
    """Example photographs (from scikit-image's bundled data) written once as JPEG files."""
    from PIL import Image
    from skimage import data

    target = build_dir(folder) / "examples"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOS:
        path = target / f"{name}.jpg"
        if not path.is_file():  # written whole, then renamed: copies of the app (--front-ends) start together
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            Image.fromarray(getattr(data, name)()).save(partial, format="JPEG", quality=92)
            os.replace(partial, path)
        paths.append(str(path))
    return paths
