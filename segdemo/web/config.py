"""The options of `python app.py` (each also a SEGDEMO_* environment variable) and what follows from them: public or
private, the limits a visitor meets, the queue's size."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..image.decode import MAX_PIXELS
from ..image.visuals import DISPLAY_SIDE
from ..media.live import LIVE_SIZE, FrameSize, frame_size
from ..media.video_io import APP_LIMITS, VideoLimits
from ..model.source import DEFAULT_MODEL
from .admission import IMAGE_MB, ImageLimits

LOOPBACK = ("127.0.0.1", "localhost", "::1")
BUILDS_OFF = ("engine builds are turned off on this public app (each takes minutes of the whole machine and swaps "
              "the engine under other visitors) — its operator can allow them with --allow-build or "
              "SEGDEMO_ALLOW_BUILD=1")
BUILDS_SPLIT = ("engine builds are turned off with --front-ends above 1, because a build would swap the engine of only "
                "the front end that got the request — build it with `python -m segdemo build` and restart the app")
QUEUE_MIN = 64  # Gradio's queue, whatever --max-batch: 32 visitors at once must never be told the app is busy
SESSION_MINUTES = 30  # a visitor's results are kept this long after their last request
MAX_SESSIONS = 500  # visitors whose state and files are kept at once; the least recently active go first
LIVE_SECONDS = 120  # default per-visitor live stream on a public app


@dataclass
class AppConfig:
    """Options of `python app.py`, each also settable through a SEGDEMO_* environment variable."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    precision: str = "auto"
    build_dir: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    display_side: int = DISPLAY_SIDE
    allow_build: bool = False  # engine builds from the page/API on a public app (always allowed on loopback)
    live_seconds: int = LIVE_SECONDS  # a visitor's live stream on a public app (Gradio's time_limit); 0: no limit
    live_size: FrameSize = LIVE_SIZE  # the largest live frame: asked of the browser's camera, larger ones scaled down
    video_seconds: float = APP_LIMITS.seconds
    video_mb: int = APP_LIMITS.bytes // 2**20
    max_batch: int = 1  # > 1: requests reaching the engine together share one call (Session's batcher)
    front_ends: int = 1  # > 1: `python app.py` supervises that many copies of the app behind one port (frontends)
    public: bool = False  # public though bound to loopback: behind a reverse proxy (ours with --front-ends, or yours)
    image_mb: int = IMAGE_MB
    image_mp: int = MAX_PIXELS // 1_000_000
    session_minutes: float = SESSION_MINUTES
    max_sessions: int = MAX_SESSIONS
    mcp: bool = False  # Gradio's MCP server at /gradio_api/mcp/, serving the one stateless segment tool (web/mcp_tool)
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
        """Whether visitors other than the operator reach this app: a non-loopback bind, a share link, a Space, front
        ends behind the proxy, or --public (loopback behind a reverse proxy). Demo adds requests seen via a proxy."""
        return (self.public or self.host not in LOOPBACK or self.share or bool(os.environ.get("SPACE_ID"))
                or self.front_ends > 1 or self.front_end_index is not None)

    @property
    def builds_refused(self) -> str | None:
        """Why engine builds from the page and API are refused here, or None where they are allowed."""
        return self.refuse_builds(self.is_public)

    @property
    def builds_allowed(self) -> bool:
        return self.builds_refused is None

    def refuse_builds(self, public: bool) -> str | None:
        """Why builds are refused on an app that is (or has found out it is) `public`; None where allowed."""
        if self.front_end_index is not None:
            return BUILDS_SPLIT
        return BUILDS_OFF if public and not self.allow_build else None

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(bytes=self.image_mb * 2**20, pixels=self.image_mp * 1_000_000)

    @property
    def session_seconds(self) -> float:
        return self.session_minutes * 60

    @property
    def live_time_limit(self) -> int | None:
        """Seconds of live stream per visitor: limited on a public app only (and not at all with 0)."""
        return self.live_seconds if self.is_public and self.live_seconds > 0 else None

    @property
    def webcam_constraints(self) -> dict[str, dict[str, dict[str, int]]]:
        """What the page asks of the browser's camera (getUserMedia): frames of `live_size`.

        An ideal, not a max: a browser that cannot scale its camera's frames would refuse a max outright, leaving no
        camera at all; what comes larger is scaled down on the server (media.live)."""
        size = self.live_size
        return {"video": {"width": {"ideal": size.width}, "height": {"ideal": size.height}}}

    @property
    def video_limits(self) -> VideoLimits:
        return replace(APP_LIMITS, seconds=self.video_seconds, bytes=self.video_mb * 2**20)

    @property
    def upload_mb(self) -> int:
        """Gradio's upload limit (one for every upload): the larger kind's; images are held to theirs before
        decoding."""
        return max(self.image_mb, self.video_mb)

    @property
    def body_bytes(self) -> int:
        """The largest request body other than an upload: an image inline as a data: URL (base64) and its JSON."""
        return self.image_mb * 2**20 * 4 // 3 + 2**20

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
            live_size=frame_size(env.get("SEGDEMO_LIVE_SIZE", str(cls.live_size))),
            video_seconds=float(env.get("SEGDEMO_VIDEO_SECONDS", cls.video_seconds)),
            video_mb=int(env.get("SEGDEMO_VIDEO_MB", cls.video_mb)),
            max_batch=int(env.get("SEGDEMO_MAX_BATCH", cls.max_batch)),
            front_ends=int(env.get("SEGDEMO_FRONT_ENDS", cls.front_ends)),
            public=env.get("SEGDEMO_PUBLIC", "").lower() in ("1", "true", "yes"),
            image_mb=int(env.get("SEGDEMO_IMAGE_MB", cls.image_mb)),
            image_mp=int(env.get("SEGDEMO_IMAGE_MP", cls.image_mp)),
            session_minutes=float(env.get("SEGDEMO_SESSION_MINUTES", cls.session_minutes)),
            max_sessions=int(env.get("SEGDEMO_MAX_SESSIONS", cls.max_sessions)),
            # Gradio's own switch counts too (the app passes launch() its choice, so Gradio never reads it itself)
            mcp=env.get("SEGDEMO_MCP", env.get("GRADIO_MCP_SERVER", "")).lower() in ("1", "true", "yes"),
        )
