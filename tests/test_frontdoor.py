"""The front door's parts without app processes: head parsing, cookies, routing, and the proxy between real sockets
(small asyncio HTTP servers on loopback stand in for the front ends)."""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from segdemo.appconfig import BUILDS_SPLIT, AppConfig
from segdemo.frontdoor import (
    COOKIE,
    MAX_HEAD,
    NONE_LIVE,
    BadRequest,
    FrontDoor,
    Upstream,
    parse_request_head,
    request_bytes,
    response_head,
)
from segdemo.frontends import child_argv, child_env

from .conftest import alive

ROOT = Path(__file__).resolve().parent.parent


def test_request_head_is_parsed_with_its_cookie():
    head = parse_request_head(b"GET /gradio_api/queue/data?session_hash=abc HTTP/1.1\r\nHost: x\r\n"
                              b"Cookie: a=1; segdemo_frontend=1.3; b=2\r\nConnection: keep-alive\r\n\r\n")
    assert (head.method, head.target, head.version) == ("GET", "/gradio_api/queue/data?session_hash=abc", "HTTP/1.1")
    assert head.cookie(COOKIE) == "1.3" and head.cookie("b") == "2" and head.cookie("c") is None
    assert not head.upgrade


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello sent to the plain port
])
def test_malformed_heads_are_refused(raw):
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw)
    assert info.value.status == 400


def test_too_many_headers_is_431():
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw)
    assert info.value.status == 431


def test_forwarded_request_closes_after_one_response_and_names_the_client():
    head = parse_request_head(b"POST /upload HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
                              b"X-Forwarded-For: 10.0.0.1\r\nContent-Length: 3\r\n\r\n")
    out = request_bytes(head, "192.0.2.7").decode()
    assert out.startswith("POST /upload HTTP/1.1\r\nHost: h\r\n") and out.endswith("\r\n\r\n")
    assert "X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n" in out and "Content-Length: 3\r\n" in out
    assert "Connection: close\r\n" in out and "keep-alive" not in out.lower().replace("connection: close", "")


def test_upgrade_requests_keep_their_connection_headers():
    head = parse_request_head(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    out = request_bytes(head, "127.0.0.1").decode()
    assert head.upgrade and "Connection: Upgrade\r\n" in out and "Connection: close" not in out


def test_response_head_gets_the_cookie_and_closes():
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: keep-alive\r\n\r\n"
    out = response_head(raw, f"{COOKIE}=0.1; Path=/; HttpOnly; SameSite=Lax", keep_open=False).decode()
    assert out.startswith("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
    assert "keep-alive" not in out and "Connection: close\r\n" in out
    assert f"Set-Cookie: {COOKIE}=0.1; Path=/; HttpOnly; SameSite=Lax\r\n\r\n" in out
    assert response_head(raw, None, keep_open=True) == raw


def test_routing_keeps_pins_moves_stale_ones_consistently_and_balances():
    ups = [Upstream(0, 1, 1, live=True), Upstream(1, 2, 1, live=True), Upstream(2, 3, 1, live=True)]
    door = FrontDoor(ups)
    assert door.route("1.1") is ups[1]
    ups[0].active, ups[1].active, ups[2].active = 3, 1, 2
    assert door.route(None) is ups[1]  # least busy
    ups[1].live = False  # front end 1 died: its visitors move, each stale pin to one place
    moved = door.route("1.1")
    assert moved is not ups[1] and all(door.route("1.1") is moved for _ in range(5))
    ups[1].generation, ups[1].live = 2, True  # restarted: the old pin stays where it moved (its session is there)
    assert door.route("1.1") is moved and door.route("1.2") is ups[1]
    assert door.route("9.9") in ups and door.route("9.9") is door.route("9.9")
    for up in ups:
        up.live = False
    assert door.route("0.1") is None and door.route(None) is None


def test_turns_spread_visitors_arriving_one_by_one():
    ups = [Upstream(0, 1, 1, live=True), Upstream(1, 2, 1, live=True)]
    door = FrontDoor(ups)
    assert [door.route(None).index for _ in range(4)] == [0, 1, 0, 1]


def _children_options(config: AppConfig) -> list[str]:
    return child_argv(config, "app.py", 1, 5555)[2:]


def test_front_ends_get_the_parents_options_and_its_public_ness():
    config = AppConfig(model="random:b0", backend="onnxruntime", host="0.0.0.0", port=80, share=True, front_ends=3,
                       max_batch=4, allow_build=True)
    argv = _children_options(config)
    assert argv[:4] == ["--model", "random:b0", "--backend", "onnxruntime"]
    assert "--allow-build" in argv and argv[argv.index("--max-batch") + 1] == "4"
    assert "--share" not in argv and argv[-9:] == ["--host", "127.0.0.1", "--port", "5555", "--front-ends", "1",
                                                   "--front-end-index", "1", "--public"]
    assert "--public" in _children_options(AppConfig(front_ends=2))  # behind the proxy, every copy is public
    assert "--public" in _children_options(AppConfig(front_ends=2, public=True))


def test_a_front_end_of_several_refuses_engine_builds_and_a_declared_public_app_is_public():
    assert AppConfig(front_end_index=0).builds_refused == BUILDS_SPLIT
    assert AppConfig().builds_allowed and not AppConfig().is_public
    public = AppConfig(public=True)
    assert public.is_public and not public.builds_allowed and public.live_time_limit == public.live_seconds
    assert AppConfig(public=True, allow_build=True).builds_allowed
    assert AppConfig.from_env({"SEGDEMO_PUBLIC": "1", "SEGDEMO_FRONT_ENDS": "4"}).is_public
    assert AppConfig.from_env({"SEGDEMO_FRONT_ENDS": "4"}).front_ends == 4


def test_queue_holds_32_visitors_and_stays_bounded():
    assert AppConfig().queue_size >= 64 and AppConfig(max_batch=32).queue_size == 4 * 64


def test_front_ends_share_one_gradio_folder_and_never_share_a_link(monkeypatch):
    monkeypatch.setenv("SEGDEMO_SHARE", "1")
    env = child_env("/tmp/x")
    assert env["GRADIO_TEMP_DIR"] == "/tmp/x" and "SEGDEMO_SHARE" not in env


# The proxy between real sockets. Each stand-in front end answers with its own name and the head it received.

async def _stand_in(name: str) -> asyncio.Server:
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        body = name.encode() + b"\n" + head
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _ask(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes: one request per connection
    writer.close()
    return data


def _get(pin: str | None = None) -> bytes:
    cookie = f"Cookie: {COOKIE}={pin}\r\n" if pin else ""
    return f"GET /config HTTP/1.1\r\nHost: app\r\n{cookie}\r\n".encode()


def test_proxy_pins_moves_and_refuses_between_real_sockets():
    async def scenario():
        servers = [await _stand_in("zero"), await _stand_in("one")]
        ups = [Upstream(i, s.sockets[0].getsockname()[1], 1, live=True) for i, s in enumerate(servers)]
        door = FrontDoor(ups)
        proxy = await door.start("127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]

        first = await _ask(port, _get())
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in first
        assert f"Set-Cookie: {COOKIE}=0.1;".encode() in first and b"\r\n\r\nzero\n" in first
        assert b"X-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n" in first  # what the front end got
        pinned = await _ask(port, _get("1.1"))
        assert b"\r\n\r\none\n" in pinned and b"Set-Cookie" not in pinned

        servers[1].close()  # front end 1 dies; the proxy has not been told
        await servers[1].wait_closed()
        moved = await _ask(port, _get("1.1"))
        assert b"\r\n\r\nzero\n" in moved and f"Set-Cookie: {COOKIE}=0.1;".encode() in moved
        assert not ups[1].live

        garbage = await _ask(port, b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        huge = await _ask(port, b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 431 ")
        assert b"\r\n\r\nzero\n" in await _ask(port, _get())  # still serving

        ups[0].live = False
        none = await _ask(port, _get())
        assert none.startswith(b"HTTP/1.1 503 ") and none.endswith(NONE_LIVE.encode() + b"\n")
        proxy.close()
        servers[0].close()

    asyncio.run(scenario())


def test_a_visitor_who_hangs_up_leaves_no_orphaned_connection():
    """The front end's side of a request whose visitor hung up is finished, not dropped by the garbage collector
    mid-await (asyncio keeps no reference to a server's connection task once its client is gone)."""
    async def scenario():
        problems = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context["message"]))
        answered = asyncio.Event()

        async def slow(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()
            answered.set()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        up = Upstream(0, server.sockets[0].getsockname()[1], 1, live=True)
        proxy = await FrontDoor([up]).start("127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
        writer.write(_get())
        await writer.drain()
        writer.close()  # hangs up before the answer
        for _ in range(10):
            await asyncio.sleep(0.1)
            gc.collect()
        await asyncio.wait_for(answered.wait(), 5)
        await asyncio.sleep(0.1)
        assert not problems and up.active == 0
        proxy.close()
        server.close()

    asyncio.run(scenario())


def test_a_front_end_ends_when_its_supervisor_is_killed(tmp_path):
    """prctl(PR_SET_PDEATHSIG): a supervisor killed with SIGKILL leaves no front end behind."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signals are Linux-only")
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "SEGDEMO_SUPERVISOR_PID": str(os.getpid())}}
        code = ("import os, time; from segdemo.frontends import exit_with_supervisor; exit_with_supervisor(); "
                "open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd={str(ROOT)!r})
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT)
    deadline = time.time() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)

