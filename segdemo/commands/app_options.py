"""The options of `python app.py`, declared here so the app's file only wires the page (the library may not import
the command-line package; app.py may)."""

from __future__ import annotations

import argparse

from ..media.live import frame_size
from ..serving import frontends
from ..web.config import AppConfig
from ..web.hosting import on_zero_gpu
from .options import add_session_options


def parse_app_args(argv: list[str] | None = None) -> AppConfig:
    """app.py's command line (each option also read from its SEGDEMO_* variable) as the app's configuration."""
    env = AppConfig.from_env()
    p = argparse.ArgumentParser(description="segdemo web app (options also read from SEGDEMO_* variables)")
    add_session_options(p, env.model, env.backend, env.precision, env.build_dir)
    p.add_argument("--host", default=env.host, help="bind address (default 127.0.0.1; 0.0.0.0 to serve a network)")
    p.add_argument("--port", type=int, default=env.port)
    p.add_argument("--share", action="store_true", default=env.share, help="create a public share link")
    p.add_argument("--allow-build", action="store_true", default=env.allow_build,
                   help="let visitors of a public app (non-loopback --host, --share, a Space) start engine builds")
    p.add_argument("--display-side", type=int, default=env.display_side,
                   help="long side of the pictures shown in the browser, px (default 1600; downloads are full size)")
    p.add_argument("--live-seconds", type=int, default=env.live_seconds,
                   help="a visitor's live webcam stream on a public app, seconds (default 120; 0: unlimited)")
    p.add_argument("--live-size", type=frame_size, default=env.live_size, metavar="WxH",
                   help="largest live webcam frame (default 640x480; larger frames are scaled down)")
    p.add_argument("--video-seconds", type=float, default=env.video_seconds,
                   help="longest video accepted, seconds (default 60; videos are also limited to 1080p)")
    p.add_argument("--video-mb", type=int, default=env.video_mb, help="largest video upload, MB (default 200)")
    p.add_argument("--max-batch", type=int, default=env.max_batch,
                   help="requests that reach the engine together share one call, up to this many (default 1: off; "
                        "16 suits a GPU serving many visitors)")
    p.add_argument("--front-ends", type=int, default=env.front_ends,
                   help="serve through this many copies of the app, each its own process, behind one port with a "
                        "sticky proxy, sharing one engine tier (tritonserver) where one can run here (default 1)")
    p.add_argument("--public", action="store_true", default=env.public,
                   help="treat the app as public though bound to loopback (it is behind a reverse proxy)")
    p.add_argument("--image-mb", type=int, default=env.image_mb,
                   help="largest image a visitor may send, MB, by any way in (default 25)")
    p.add_argument("--image-mp", type=int, default=env.image_mp,
                   help="largest image a visitor may send, megapixels (default 64)")
    p.add_argument("--session-minutes", type=float, default=env.session_minutes,
                   help="a visitor's results are kept this long after their last request (default 30)")
    p.add_argument("--max-sessions", type=int, default=env.max_sessions,
                   help="visitors whose results are kept at once; the least recently active go first (default 500)")
    p.add_argument("--mcp", action="store_true", default=env.mcp, help="also serve the MCP tool (see docs/mcp.md)")
    p.add_argument("--front-end-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    args = p.parse_args(argv)
    if not 1 <= args.front_ends <= frontends.MAX_FRONT_ENDS:
        p.error(f"--front-ends must be between 1 and {frontends.MAX_FRONT_ENDS}, not {args.front_ends}")
    if args.front_ends > 1 and on_zero_gpu():
        p.error("--front-ends above 1 does not work on ZeroGPU, where the spaces package needs the app's own process")
    if args.max_batch < 1:
        p.error(f"--max-batch must be at least 1, not {args.max_batch}")
    for name in ("image_mb", "image_mp", "session_minutes", "max_sessions"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    if args.display_side < 64:
        p.error(f"--display-side must be at least 64 px, not {args.display_side}")
    return AppConfig(**vars(args))
