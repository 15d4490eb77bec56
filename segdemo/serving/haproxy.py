"""The HAProxy configuration of `--front-ends N`: one public port, N app processes on loopback, sticky visitors.

Gradio keeps a visitor's queue, its event stream and gr.State in one process, so a cookie pins every request of a
visitor to one front end (browsers and gradio_client send it back). Each directive is HAProxy 2.6's, as documented
in its configuration manual.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from ..optional import MissingPackageError

COOKIE = "segdemo_frontend"
BINARY_ENV = "SEGDEMO_HAPROXY"  # the haproxy executable to run, where it is not on PATH
SYSTEM_DIRS = "/usr/sbin:/usr/local/sbin:/sbin"  # Debian installs it here, off an ordinary user's PATH
HEALTH_PATH = "/gradio_api/app_id"  # a Gradio route that answers from memory: cheap to ask every few seconds
NONE_UP = "No copy of this app is running yet (they are starting or restarting); try again in a few seconds."
UPGRADE_REFUSED = "This server upgrades connections to WebSocket only."


def gradio_heartbeat_s() -> float:
    """How often Gradio writes to an idle event stream: GRADIO_HEARTBEAT_INTERVAL, else its default of 15 s."""
    try:
        value = float(os.environ.get("GRADIO_HEARTBEAT_INTERVAL", ""))
    except ValueError:
        return 15.0
    return value if value > 0 else 15.0


@dataclass(frozen=True)
class Timeouts:
    """HAProxy's timeouts, in seconds."""

    header: float = 10.0  # a whole request head; browsers send it at once, the rest covers TCP retransmits
    keep_alive: float = 10.0  # an idle connection between requests; it holds one of the `maxconn` slots
    # A client that stops reading its response. (A stalled request body is cut by `header` while it fits HAProxy's
    # buffer, by `server` past it.)
    client: float = 30.0
    # A server silent while a response is due: several of Gradio's event-stream heartbeats, so a visitor waiting
    # in the queue keeps their stream; queued work runs behind those streams, never in one long silent request.
    server: float = field(default_factory=lambda: max(60.0, 4 * gradio_heartbeat_s()))
    tunnel: float = 3600.0  # an idle WebSocket, once upgraded (it replaces client and server then)
    connect: float = 5.0  # to a front end on loopback: immediate, or it is down
    check: float = 5.0  # a health check's answer; a busy front end answers slowly, not wrongly


@dataclass(frozen=True)
class ProxyConfig:
    """What the generated configuration says: where to listen, the front ends' loopback ports, limits."""

    host: str
    port: int
    upstreams: tuple[int, ...]  # front end k listens on 127.0.0.1:upstreams[k]
    # Client connections at once; beyond it the kernel keeps new ones in the listen queue until one closes.
    maxconn: int = 1000
    timeouts: Timeouts = field(default_factory=Timeouts)
    check_every_s: float = 2.0  # health checks of an up front end; a down one is tried four times as often

    def bind(self) -> str:
        if ":" in self.host:
            return f"ipv6@{self.host}:{self.port}"
        return f"{'' if self.host in ('', '0.0.0.0') else self.host}:{self.port}"


def _ms(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(cfg: ProxyConfig) -> str:
    """The haproxy.cfg text for `cfg`."""
    t = cfg.timeouts
    down_every = cfg.check_every_s / 4
    deny = (f'deny status 400 content-type "text/plain; charset=utf-8" string {_quoted(UPGRADE_REFUSED)} '
            "if { req.hdr(upgrade) -m found } !{ req.hdr(upgrade) -i websocket }")
    checks = (f"check inter {_ms(cfg.check_every_s)} fastinter {_ms(down_every)} downinter {_ms(down_every)} "
              "fall 3 rise 1 observe layer4 error-limit 1 on-error mark-down")
    servers = "\n".join(f"    server fe{k} 127.0.0.1:{port} cookie {k}" for k, port in enumerate(cfg.upstreams))
    tracking = "\n".join(f"    server fe{k} 127.0.0.1:{port} cookie {k} track front_ends/fe{k}"
                         for k, port in enumerate(cfg.upstreams))
    orphans = "\n".join(f"    use_backend orphans if {{ req.cook({COOKIE}) -m str {k} }} "
                        f"!{{ srv_is_up(front_ends/fe{k}) }}" for k in range(len(cfg.upstreams)))
    return f"""\
# Written by segdemo's --front-ends supervisor at each start (segdemo/haproxy.py); edits here are lost.
global
    maxconn {cfg.maxconn}
    # No stats page and no admin socket: nothing in this process answers anyone but visitors.

defaults
    mode http
    timeout http-request {_ms(t.header)}
    timeout http-keep-alive {_ms(t.keep_alive)}
    timeout client {_ms(t.client)}
    timeout client-fin {_ms(t.client)}
    timeout server {_ms(t.server)}
    timeout tunnel {_ms(t.tunnel)}
    timeout connect {_ms(t.connect)}
    timeout check {_ms(t.check)}
    http-error status 503 content-type "text/plain; charset=utf-8" string {_quoted(NONE_UP)}

frontend public
    bind {cfg.bind()}
    maxconn {cfg.maxconn}
    option forwardfor
    # A request body that fits one buffer must arrive within "timeout http-request" too (a larger one streams on,
    # under "timeout server"); Gradio reads whole uploads anyway, so nothing waits on the buffering.
    option http-buffer-request
    # Kept when a TLS proxy in front already said https: Gradio builds its file links from it.
    http-request set-header X-Forwarded-Proto http unless {{ req.hdr(x-forwarded-proto) -m found }}
    # Only WebSocket may switch protocols: any other upgrade would make the connection a tunnel that later requests
    # pass through unchecked.
    http-request {deny}
    # A visitor whose front end is down goes to "orphans", where a hash of their old cookie picks the same live front
    # end every time: a client that keeps its first cookies (gradio_client does) still reaches one process.
{orphans}
    default_backend front_ends

backend front_ends
    # The cookie pins a visitor; a new one goes to the front end with the fewest open connections (event streams
    # included: they are what a visitor keeps open).
    balance leastconn
    cookie {COOKIE} insert indirect nocache httponly attr SameSite=Lax
    # A refused connection is retried on another front end at once, and marks its own one down right away.
    retries 2
    option redispatch 1
    option httpchk GET {HEALTH_PATH}
    default-server {checks}
{servers}

backend orphans
    balance hash req.cook({COOKIE})
    hash-type consistent
    cookie {COOKIE} insert indirect nocache httponly attr SameSite=Lax
    retries 2
    option redispatch 1
{tracking}
"""


def executable() -> str:
    """The haproxy to run: SEGDEMO_HAPROXY, else `haproxy` on PATH or in the system folders; else
    MissingPackageError with one sentence saying how to install it."""
    wanted = os.environ.get(BINARY_ENV)
    found = shutil.which(wanted) if wanted else shutil.which("haproxy") or shutil.which("haproxy", path=SYSTEM_DIRS)
    if found is None:
        where = f" (not at {BINARY_ENV}={wanted})" if wanted else ""
        raise MissingPackageError(f"--front-ends above 1 serves its copies of the app through HAProxy, which is not "
                                  f"installed{where}: apt-get install haproxy (or your system's package of it).")
    return found
