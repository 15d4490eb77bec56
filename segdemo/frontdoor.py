"""The one public port of `--front-ends N`: a sticky reverse proxy (asyncio streams, stdlib only) to N app processes.

Gradio keeps a visitor's queue in one process — `queue/join`, its `queue/data` event stream, the heartbeat and
gr.State — so every request of a visitor must reach the same front end: a cookie pins the visitor (browsers and
gradio_client send it back). Only the request head (to route) and the response head (to set the cookie and close
the connection after the response) are parsed; bodies — uploads, chunked answers, event streams — pass untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger("segdemo.frontdoor")

COOKIE = "segdemo_frontend"
MAX_HEAD = 64 * 1024  # request and response heads; browsers send a few KB
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 30.0  # a client that never finishes its head is dropped
CHUNK = 256 * 1024
BACKLOG = 1024  # connections waiting to be accepted: many visitors' uploads, streams and downloads arrive at once
REPIN_MEMORY = 10_000  # stale cookies remembered, so each of their visitors keeps landing on one front end

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods and header names
TARGET = re.compile(r"[\x21-\x7e\x80-\xff]+")  # no spaces or control characters
VERSION = re.compile(r"HTTP/1\.[01]")
BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
PIN = re.compile(r"\d{1,4}\.\d{1,9}")  # the cookie's value: "<front end>.<its start count>"

NONE_LIVE = ("no front end of this app is running yet (they are starting or restarting) — try again in a few "
             "seconds")
LOST = "the front end that took this request stopped before answering — send it again"


class BadRequest(Exception):
    """A request head the proxy refuses, with the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Upstream:
    """One front end: its loopback port, how often it was started, whether it accepts connections."""

    index: int
    port: int = 0
    generation: int = 0  # bumped on every (re)start: a restarted front end has lost its visitors' sessions
    live: bool = False
    active: int = 0  # connections through the proxy now (event streams included)
    served: int = 0  # requests routed here so far

    @property
    def pin(self) -> str:
        return f"{self.index}.{self.generation}"


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def upgrade(self) -> bool:
        """A protocol switch (WebSocket): piped as is, the connection left to the two ends."""
        tokens = {t.strip().lower() for v in self.values("connection") for t in v.split(",")}
        return "upgrade" in tokens and bool(self.values("upgrade"))

    def cookie(self, name: str) -> str | None:
        for header in self.values("cookie"):
            for pair in header.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    return value.strip().strip('"')
        return None


def parse_request_head(raw: bytes) -> RequestHead:
    """The head (request line and headers, ending in a blank line); BadRequest for anything malformed."""
    text = raw.decode("latin-1").lstrip("\r\n")  # RFC 9112: ignore blank lines before the request line
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not TARGET.fullmatch(parts[1]) \
            or not VERSION.fullmatch(parts[2]):
        raise BadRequest(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many headers")
    head = RequestHead(*parts)
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.fullmatch(name) or BAD_VALUE.search(value):
            raise BadRequest(400, "malformed header")  # also obsolete line folding (a line starting with a space)
        head.headers.append((name, value.strip(" \t")))
    return head


def request_bytes(head: RequestHead, client: str) -> bytes:
    """The head sent to a front end: X-Forwarded-For appended and, except for upgrades, one request per connection."""
    forwarded = head.values("x-forwarded-for")
    hop = ("connection", "keep-alive", "proxy-connection") if not head.upgrade else ()
    lines = [f"{head.method} {head.target} {head.version}"]
    lines += [f"{n}: {v}" for n, v in head.headers if n.lower() not in ("x-forwarded-for", *hop)]
    lines.append("X-Forwarded-For: " + ", ".join([*forwarded, client]))
    if not head.upgrade:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def set_cookie(pin: str) -> str:
    return f"{COOKIE}={pin}; Path=/; HttpOnly; SameSite=Lax"


def response_head(raw: bytes, cookie: str | None, keep_open: bool) -> bytes:
    """A front end's response head with the visitor's cookie added and, unless kept open, `Connection: close`."""
    lines = raw.rstrip(b"\r\n").split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        if not keep_open and line.split(b":", 1)[0].strip().lower() in (b"connection", b"keep-alive"):
            continue
        out.append(line)
    if not keep_open:
        out.append(b"Connection: close")
    if cookie:
        out.append(b"Set-Cookie: " + cookie.encode("latin-1"))
    return b"\r\n".join(out) + b"\r\n\r\n"


def status_of(raw: bytes) -> int:
    """The status code of a response head; 0 when it is not one."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def error_response(status: int, sentence: str) -> bytes:
    body = (sentence + "\n").encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class FrontDoor:
    """Routes each connection's one request to a front end: the visitor's pinned one, else the least busy."""

    def __init__(self, upstreams: list[Upstream], upstream_host: str = "127.0.0.1") -> None:
        self.upstreams = upstreams
        self.upstream_host = upstream_host
        self.repinned: OrderedDict[str, str] = OrderedDict()  # stale pin → the pin its visitor got instead
        self._turn = 0
        # asyncio drops its own reference to a connection's task when the visitor disconnects; the task still has the
        # front end's side to finish, and without this reference the garbage collector would end it mid-await.
        self._handlers: set[asyncio.Task] = set()

    def route(self, pin: str | None, skip: frozenset[int] = frozenset()) -> Upstream | None:
        """The front end for a visitor's pin: its own while live; else where that pin was moved; else the least
        busy live one (None: none is live). A stale pin always moves to the same front end, so a client that keeps
        sending it (gradio_client keeps its first cookies) still reaches one process."""
        live = {u.pin: u for u in self.upstreams if u.live and u.index not in skip}
        if pin in live:
            return live[pin]
        if pin is not None and self.repinned.get(pin) in live:
            self.repinned.move_to_end(pin)
            return live[self.repinned[pin]]
        if not live:
            return None
        least = min(u.active for u in live.values())
        tied = [u for u in live.values() if u.active == least]
        chosen = tied[self._turn % len(tied)]  # take turns among equals, so visitors arriving one by one spread
        self._turn += 1
        if pin is not None:
            self.repinned[pin] = chosen.pin
            self.repinned.move_to_end(pin)
            if len(self.repinned) > REPIN_MEMORY:
                self.repinned.popitem(last=False)
        return chosen

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD, reuse_address=True, backlog=BACKLOG)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "unknown"
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            try:
                head = parse_request_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S))
            except asyncio.LimitOverrunError:
                raise BadRequest(431, "request head too large") from None
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise BadRequest(400, "incomplete request head") from None
                return  # connected and closed without a request: nothing to answer
            except asyncio.TimeoutError:
                raise BadRequest(408, "request head not finished in time") from None
            await self._forward(head, reader, writer, client)
        except BadRequest as exc:
            with contextlib.suppress(OSError):
                writer.write(error_response(exc.status, f"this proxy could not read the request: {exc}"))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a client or front end went away mid-transfer; the other side is closed below
        finally:
            writer.close()

    async def _connect(self, pin: str | None) -> tuple[Upstream, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the visitor's front end, skipping ones that refuse it (they died; the visitor moves)."""
        skip: set[int] = set()
        while (up := self.route(pin, frozenset(skip))) is not None:
            try:
                reader, writer = await asyncio.open_connection(self.upstream_host, up.port, limit=MAX_HEAD)
                return up, reader, writer
            except OSError as exc:
                log.warning("front end %d (port %d) refused a connection (%s); its visitors move to another",
                            up.index, up.port, exc)
                up.live = False  # until the supervisor sees it accept connections again
                skip.add(up.index)
        return None

    async def _forward(self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       client: str) -> None:
        pin = head.cookie(COOKIE)
        pin = pin if pin is not None and PIN.fullmatch(pin) else None
        connected = await self._connect(pin)
        if connected is None:
            writer.write(error_response(503, NONE_LIVE))
            await writer.drain()
            return
        up, up_reader, up_writer = connected
        up.active += 1
        up.served += 1
        upload = None
        try:
            up_writer.write(request_bytes(head, client))
            upload = asyncio.create_task(_pump_request(reader, up_writer))
            await self._respond(up_reader, writer, None if pin == up.pin else set_cookie(up.pin), head.upgrade)
        finally:
            up.active -= 1
            if upload is not None:
                upload.cancel()
            up_writer.close()

    async def _respond(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cookie: str | None,
                       upgrade: bool) -> None:
        """The front end's response: interim 1xx heads as they are, the final head rewritten, then the body."""
        while True:
            try:
                raw = await up_reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                writer.write(error_response(502, LOST))
                await writer.drain()
                return
            status = status_of(raw)
            if 100 <= status < 200 and status != 101:
                writer.write(raw)
                continue
            writer.write(response_head(raw, cookie, keep_open=upgrade and status == 101))
            break
        await _pump(up_reader, writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _pump_request(reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """The request body (and, after an upgrade, the client's side), then end-of-file to the front end: a visitor
    who closes an event stream makes Gradio see the disconnect."""
    try:
        await _pump(reader, up_writer)
        if up_writer.can_write_eof():
            up_writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        up_writer.close()  # the visitor is gone (reset): end the front end's side now, not at its next write
