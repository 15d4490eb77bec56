"""`python app.py --front-ends 2`: the real app in two processes behind the real HAProxy, sharing one engine tier (a
real tritonserver, where the nvidia-pytriton wheel is installed), driven by gradio_client; and HAProxy's limits (short
timeouts, a small connection cap) tried on loopback in front of those processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.image.visuals import read_class_map
from segdemo.optional import MissingPackageError
from segdemo.serving.frontends import free_port
from segdemo.serving.haproxy import COOKIE, NONE_UP, UPGRADE_REFUSED, ProxyConfig, Timeouts, executable, render
from segdemo.web.demo import ENGINE_DOWN

from .conftest import alive, app_process, photo

SIZES = ((120, 160), (96, 128), (160, 112), (80, 200))  # (height, width): each answer carries its image's size
EDGE = Timeouts(header=1.5, keep_alive=1.5, client=1.5, server=4.0, check=2.0)  # short, for the limit tests
EDGE_CAP = 4


def _haproxy() -> str | None:
    with contextlib.suppress(MissingPackageError):
        return executable()
    return None


needs_haproxy = pytest.mark.skipif(_haproxy() is None, reason="haproxy is not installed (apt-get install haproxy; "
                                   ".ci/run installs it): --front-ends above 1 serves through it")


@pytest.fixture(scope="module")
def fleet(build_dir, tmp_path_factory):
    """One app with two front ends (and their engine tier, where a tritonserver can run) for the module:
    (supervisor process, URL, log file)."""
    if _haproxy() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    log = tmp_path_factory.mktemp("frontends") / "app.log"
    with app_process(build_dir, log, "--front-ends", "2", "--backend", "onnxruntime") as (proc, url):
        _wait_for(log, routed, 120)
        yield proc, url, log


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, size in enumerate(SIZES):
        path = folder / f"{i}.jpg"
        Image.fromarray(photo(("coffee", "chelsea", "rocket", "astronaut")[i], size)).save(path, quality=90)
        paths.append(path)
    return paths


@contextlib.contextmanager
def edge_proxy(tmp_path: Path, upstreams: tuple[int, ...], maxconn: int = 1000):
    """The generated configuration, with EDGE's short timeouts, run by the real haproxy on a free loopback port in
    front of `upstreams`; yields its port once a front end behind it answers."""
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(ProxyConfig("127.0.0.1", port, upstreams, maxconn=maxconn, timeouts=EDGE)))
    proc = subprocess.Popen([executable(), "-f", str(cfg), "-db"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while _status(port, "/config") != 200:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def routed(text: str) -> bool:
    """Whether haproxy has found both front ends up (its health checks), from the supervisor's log."""
    return all(f"Server front_ends/fe{k} is UP" in text for k in (0, 1))


def _front_end_ports(log: Path) -> tuple[int, ...]:
    ports = dict(re.findall(r"front end (\d) started: pid \d+, port (\d+)", log.read_text()))
    return tuple(int(ports[k]) for k in sorted(ports))


def _wait_for(log: Path, done, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace")
        if done(text):
            return text
        time.sleep(0.25)
    pytest.fail(f"the supervisor's log never showed what the test waits for:\n{log.read_text()[-4000:]}")


def _served(log: Path) -> dict[int, int]:
    """Requests each front end has segmented, from its relayed log lines."""
    counts = {0: 0, 1: 0}
    for k in re.findall(r"^\[frontend (\d)\] .* infer time:", log.read_text(errors="replace"), re.M):
        counts[int(k)] += 1
    return counts


def shared(log: Path) -> bool:
    """Whether the front ends share the supervisor's engine tier (else each loaded its own model: no tritonserver)."""
    return "the front ends share one engine tier" in log.read_text(errors="replace")


def needs_engine_tier(log: Path) -> None:
    if not shared(log):
        note = re.search(r"no shared engine tier: [^\n]*", log.read_text(errors="replace"))
        pytest.skip(note.group(0) if note else "the front ends do not share an engine tier")


def _engine(log: Path) -> tuple[int, int]:
    """The engine tier's latest tritonserver: (pid, HTTP port), from the supervisor's log."""
    started = r"engine tier started: pid (\d+), gRPC [\d.:]+, HTTP 127\.0\.0\.1:(\d+)"
    pid, port = re.findall(started, log.read_text())[-1]
    return int(pid), int(port)


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _segment(client, path: Path) -> np.ndarray:
    from gradio_client import handle_file

    _, classes_png, legend, _ = client.predict(handle_file(str(path)), 0.5, False, api_name="/segment")
    classes = read_class_map(classes_png)
    assert legend["image_size"] == list(classes.shape)
    return classes


def _pin(client) -> int:
    return int(client.cookies[COOKIE])


def _answer(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything `sock` receives until the other end closes it (or `limit` seconds pass), and when it closed."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - start


def test_concurrent_clients_get_their_own_answers_from_both_front_ends(fleet, images, session_factory):
    _, url, log = fleet
    clients = [_client(url) for _ in range(6)]
    assert {_pin(c) for c in clients} == {0, 1}  # new visitors are spread over the front ends
    before = _served(log)
    # One thread per client, each a visitor sending its pictures one after another: gradio_client 2.7's Client
    # is not safe to call from several threads at once (a shared event stream that one call may close under another).
    def visit(client) -> list[tuple[int, np.ndarray]]:
        return [(k % len(images), _segment(client, images[k % len(images)])) for k in range(3)]

    with ThreadPoolExecutor(len(clients)) as pool:
        maps = [answer for answers in pool.map(visit, clients) for answer in answers]
    for index, classes in maps:
        assert classes.shape == SIZES[index]
    # The CPU's default (int8) everywhere; the engine tier's session runs the batched network graph, quantized on its
    # own, so its answers agree with a direct session's as the batched and one-image int8 graphs agree.
    direct = session_factory("random:tiny").segment(str(images[0])).class_map
    agreement = [float((classes == direct).mean()) for index, classes in maps if index == 0]
    assert agreement and min(agreement) >= (0.99 if shared(log) else 1.0), agreement
    _wait_for(log, lambda _: sum(_served(log).values()) >= sum(before.values()) + len(maps), 30)
    served = _served(log)
    assert all(served[k] > before[k] for k in (0, 1))
    if shared(log):  # every answer came from the one engine, whose dynamic batcher took requests of both
        import tritonclient.http

        stats = tritonclient.http.InferenceServerClient(f"127.0.0.1:{_engine(log)[1]}").get_inference_statistics(
            "segformer")["model_stats"][0]
        print(f"engine tier: {stats['inference_count']} requests in {stats['execution_count']} executions")
        assert stats["inference_count"] >= len(maps)


def test_a_client_keeps_its_front_end(fleet, images):
    _, url, log = fleet
    with urllib.request.urlopen(url + "config", timeout=30) as answer:
        cookie = answer.headers["Set-Cookie"]
    assert re.fullmatch(rf"{COOKIE}=[01]; path=/; HttpOnly; SameSite=Lax", cookie)
    client = _client(url)
    mine = _pin(client)
    before = _served(log)
    for path in images[:3]:
        _segment(client, path)
    _wait_for(log, lambda _: _served(log)[mine] >= before[mine] + 3, 30)
    assert _served(log)[1 - mine] == before[1 - mine]
    full = client.predict(0.5, api_name="/full_overlay")  # gr.State of its last result lives in that process
    assert Image.open(full).size == (SIZES[2][1], SIZES[2][0])


def test_garbage_gets_400_and_the_proxy_keeps_serving(fleet, images):
    _, url, _ = fleet
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"HELLO THERE, PROXY\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert _segment(_client(url), images[1]).shape == SIZES[1]


def test_engine_builds_are_refused_with_several_front_ends(fleet):
    _, url, _ = fleet
    with pytest.raises(Exception, match="engine builds are turned off with --front-ends above 1"):
        _client(url).predict("fp32", api_name="/build_engine")


def test_one_engine_tier_serves_both_front_ends_which_hold_no_model(fleet):
    _, _, log = fleet
    needs_engine_tier(log)
    text = log.read_text()
    assert len(re.findall(r"engine tier's model repository exported", text)) == 1
    url = re.search(r"one engine tier: tritonserver at (triton://127\.0\.0\.1:\d+/segformer)", text).group(1)
    for k in (0, 1):
        assert (f"[frontend {k}] " in text and f"front end {k} is served by the engine tier shared by every front end "
                f"of this app: {url}, model random:tiny (session variant)") in text
        pid = int(re.findall(rf"front end {k} started: pid (\d+)", text)[-1])
        assert "onnxruntime" not in (Path("/proc") / str(pid) / "maps").read_text()  # no runtime, no model
    engine, _ = _engine(log)
    stubs = [p for p in Path("/proc").glob("[0-9]*") if _group(p) == engine and p.name != str(engine)]
    assert any("onnxruntime" in (p / "maps").read_text() for p in stubs)  # the one copy: in the Python backend


def test_a_killed_engine_tier_costs_one_sentence_and_is_restarted(fleet, images, tmp_path):
    """tritonserver killed while a large request runs: that request finishes or fails with one sentence, so does the
    next one while the engine is down, and once the supervisor has restarted it (same port) the same visitor is
    served again, the same answer as before."""
    from gradio_client import handle_file

    _, url, log = fleet
    needs_engine_tier(log)
    client = _client(url)
    before = _segment(client, images[1])
    pid, _ = _engine(log)
    big = tmp_path / "big.jpg"
    Image.fromarray(photo("astronaut", (2000, 3000))).save(big, quality=90)
    in_flight = ThreadPoolExecutor(1).submit(client.predict, handle_file(str(big)), 0.5, False, api_name="/segment")
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    failed = in_flight.exception(timeout=60)
    assert failed is None or ENGINE_DOWN in str(failed)
    with pytest.raises(Exception, match=re.escape(ENGINE_DOWN)) as down:
        _segment(client, images[1])  # restarted only after 1 s
    assert "\n" not in str(down.value)
    # the visitor's sentence above; the operator's, naming the server, in the log
    _wait_for(log, lambda text: re.search(r"the Triton server at 127\.0\.0\.1:\d+ did not answer this request", text),
              10)
    text = _wait_for(log, lambda text: len(re.findall(r"engine tier ready on", text)) == 2, 60)
    assert re.search(rf"engine tier \(tritonserver pid {pid}\) exited with code -9 after \d+ s; restarting it in 1 s",
                     text)
    assert np.array_equal(_segment(client, images[1]), before)


@needs_haproxy
def test_no_front_end_up_gets_503_with_one_sentence(tmp_path):
    with socket.socket() as nobody:  # a port that refuses connections while this test runs
        nobody.bind(("127.0.0.1", 0))
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(ProxyConfig("127.0.0.1", port, (nobody.getsockname()[1],), timeouts=EDGE)))
        proc = subprocess.Popen([executable(), "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 10
            while (status := _status(port, "/")) == 0 and time.time() < deadline:
                time.sleep(0.1)
            assert status == 503
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            assert answer.value.read().decode() == NONE_UP
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_slow_heads_and_bodies_are_cut_and_upgrades_refused(fleet, tmp_path):
    """HAProxy in front of the real front ends, with EDGE's timeouts: a request head never finished and a body
    never sent are cut (408) after `timeout http-request`, a body stalled past HAProxy's buffer after `timeout
    server` (504), an h2c upgrade refused; after each a normal request is answered."""
    _, _, log = fleet
    with edge_proxy(tmp_path, _front_end_ports(log)) as port:
        cases = {"head": b"GET /config HTTP/1.1\r\nHost: x\r\n",
                 "body": b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
                 "big body": b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n"
                             b"Content-Type: multipart/form-data; boundary=cut\r\n\r\n--cut\r\nContent-Disposition: "
                             b'form-data; name="files"; filename="a.bin"\r\n\r\n' + b"x" * 100_000}
        cut = {}
        for name, payload in cases.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(payload)
                answer, cut[name] = _answer(s, 30)
            status = 504 if name == "big body" else 408
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (name, answer[:200])
            assert _status(port, "/config") == 200
        print(f"cut after: {', '.join(f'{name} {seconds:.2f} s' for name, seconds in cut.items())}")
        assert EDGE.header - 0.1 <= cut["head"] <= EDGE.header + 1.0
        assert EDGE.header - 0.1 <= cut["body"] <= EDGE.header + 1.0
        assert EDGE.server - 0.1 <= cut["big body"] <= EDGE.server + 1.5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                      b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
            answer, _ = _answer(s, 10)
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(UPGRADE_REFUSED.encode())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # WebSocket passes to the front end
            s.sendall(b"GET /gradio_api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            answer, _ = _answer(s, 3)
        assert answer.startswith(b"HTTP/1.1 ") and UPGRADE_REFUSED.encode() not in answer
        assert _status(port, "/config") == 200


def test_connections_beyond_the_cap_wait_for_a_free_slot(fleet, images, tmp_path):
    """`maxconn` EDGE_CAP: with every slot held by a client that never finishes its head, one more connection is
    accepted by the kernel but not served until HAProxy cuts a slot's holder (`timeout http-request`); then the app
    serves a whole gradio_client request through the same proxy."""
    _, _, log = fleet
    with edge_proxy(tmp_path, _front_end_ports(log), maxconn=EDGE_CAP) as port:
        holders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(EDGE_CAP)]
        for s in holders:
            s.sendall(b"GET /config HTTP/1.1\r\n")
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            extra.settimeout(EDGE.header / 2)
            with pytest.raises(TimeoutError):
                extra.recv(1)  # waiting in the listen queue: HAProxy has not accepted it
            answer, _ = _answer(extra, 30)
        waited = time.monotonic() - started
        print(f"the connection over the cap was answered after {waited:.2f} s")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert EDGE.header - 0.5 <= waited <= EDGE.header + 2.0
        for s in holders:
            assert _answer(s, 10)[0].startswith(b"HTTP/1.1 408 ")
            s.close()
        assert _segment(_client(f"http://127.0.0.1:{port}/"), images[0]).shape == SIZES[0]


def test_a_killed_front_end_is_restarted_and_its_visitors_move(fleet, images, tmp_path):
    from gradio_client import handle_file

    _, url, log = fleet
    client = _client(url)
    _segment(client, images[0])
    victim = _pin(client)
    pid = int(re.findall(rf"front end {victim} started: pid (\d+)", log.read_text())[-1])
    big = tmp_path / "big.jpg"
    Image.fromarray(photo("astronaut", (2000, 3000))).save(big, quality=90)
    in_flight = ThreadPoolExecutor(1).submit(client.predict, handle_file(str(big)), 0.5, False, api_name="/segment")
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)  # mid-run, most likely mid-request: that one request may fail, but must end
    in_flight.exception(timeout=60)
    for path, size in zip(images, SIZES, strict=True):  # the same client, pinned to a dead process: moved, served
        assert _segment(client, path).shape == size
    text = _wait_for(log, lambda text: len(re.findall(rf"front end {victim} ready", text)) == 2, 120)
    assert re.search(rf"front end {victim} \(pid {pid}\) exited with code -9 after \d+ s; restarting it in 1 s", text)
    assert re.search(rf"\[haproxy\] .*Server front_ends/fe{victim} is DOWN", text)
    _wait_for(log, lambda text: len(re.findall(rf"Server front_ends/fe{victim} is UP", text)) >= 1, 30)
    assert _segment(_client(url), images[2]).shape == SIZES[2]


def test_a_killed_haproxy_is_restarted(fleet, images):
    _, url, log = fleet
    pid = int(re.findall(r"haproxy started: pid (\d+)", log.read_text())[-1])
    os.kill(pid, signal.SIGKILL)
    _wait_for(log, lambda text: len(re.findall(r"haproxy started: pid \d+", text)) == 2, 30)
    assert re.search(rf"haproxy \(pid {pid}\) exited with code -9 after \d+ s; restarting it in 1 s", log.read_text())
    deadline = time.time() + 30
    while _status(int(url.rstrip("/").rsplit(":", 1)[1]), "/config") != 200:
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    assert _segment(_client(url), images[3]).shape == SIZES[3]


def test_sigterm_stops_the_supervisor_haproxy_and_every_front_end(fleet):
    proc, _, log = fleet
    pids = [int(p) for p in re.findall(r"(?:front end \d|haproxy|engine tier) started: pid (\d+)", log.read_text())]
    assert len(pids) >= 3 and re.search(r"haproxy started: pid \d+", log.read_text())
    engine = _engine(log)[0] if shared(log) else None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], log.read_text()[-3000:]
    assert re.search(r"stopping haproxy, 2 front ends( and the engine tier)?$", log.read_text(), re.M)
    if engine is not None:  # the Python backend's stubs too: they share tritonserver's process group
        assert not [p for p in Path("/proc").glob("[0-9]*") if _group(p) == engine]


def _group(proc: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    return None


def test_without_haproxy_several_front_ends_stop_at_start_with_one_sentence(tmp_path):
    env = {**os.environ, "SEGDEMO_HAPROXY": str(tmp_path / "no-haproxy-here")}
    done = subprocess.run([sys.executable, "app.py", "--front-ends", "2", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    assert "HAProxy, which is not installed" in done.stderr and "apt-get install haproxy" in done.stderr


def test_front_ends_pointed_at_a_remote_engine_tier_use_it_and_start_none(build_dir, images, session_factory,
                                                                         tmp_path):
    """`--front-ends 2 --backend triton://…`: a tier started elsewhere (here a tritonserver of the test's own) serves
    both front ends; the supervisor starts no engine of its own and says so."""
    from segdemo.triton.repository import export_repository
    from segdemo.triton.server import TritonServer, unavailable_reason

    if _haproxy() is None or unavailable_reason():
        pytest.skip(f"needs haproxy and a local tritonserver: {unavailable_reason() or 'apt-get install haproxy'}")
    session = session_factory("random:tiny", "fp32")
    (done,) = export_repository(session.source, session.onnx_file, tmp_path / "triton", ("python",))
    log = tmp_path / "app.log"
    with TritonServer(done.repository) as server:
        url = f"triton://{server.grpc_address}/segformer"
        with app_process(build_dir, log, "--front-ends", "2", "--backend", url) as (_, app_url):
            text = _wait_for(log, routed, 120)
            assert f"served by the engine tier at {url} (started elsewhere: none is started here)" in text
            assert "engine tier started" not in text
            answer = _segment(_client(app_url), images[0])
    assert np.array_equal(answer, session.segment(str(images[0])).class_map)
