"""`python app.py --front-ends 2`: the real app in two processes behind the real proxy, driven by gradio_client."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo.frontdoor import COOKIE
from segdemo.visuals import read_class_map

from .conftest import alive, app_process, photo

SIZES = ((120, 160), (96, 128), (160, 112), (80, 200))  # (height, width): each answer carries its image's size


@pytest.fixture(scope="module")
def fleet(build_dir, tmp_path_factory):
    """One app with two front ends for the module: (supervisor process, URL, log file)."""
    log = tmp_path_factory.mktemp("frontends") / "app.log"
    with app_process(build_dir, log, "--front-ends", "2", "--backend", "onnxruntime") as (proc, url):
        _wait_for(log, lambda text: len(re.findall(r"front end \d ready", text)) == 2, 120)
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
    return int(client.cookies[COOKIE].split(".")[0])


def test_concurrent_clients_get_their_own_answers_from_both_front_ends(fleet, images, session_factory):
    _, url, log = fleet
    clients = [_client(url) for _ in range(6)]
    assert {_pin(c) for c in clients} == {0, 1}  # new visitors are spread over the front ends
    before = _served(log)
    jobs = [(c, k % len(images)) for k in range(3) for c in clients]
    with ThreadPoolExecutor(len(clients)) as pool:
        maps = list(pool.map(lambda job: (job[1], _segment(job[0], images[job[1]])), jobs))
    for index, classes in maps:
        assert classes.shape == SIZES[index]
    direct = session_factory("random:tiny").segment(str(images[0])).class_map
    assert all(np.array_equal(classes, direct) for index, classes in maps if index == 0)
    _wait_for(log, lambda _: sum(_served(log).values()) >= sum(before.values()) + len(jobs), 30)
    served = _served(log)
    assert all(served[k] > before[k] for k in (0, 1))


def test_a_client_keeps_its_front_end(fleet, images):
    _, url, log = fleet
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
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert _segment(_client(url), images[1]).shape == SIZES[1]


def test_engine_builds_are_refused_with_several_front_ends(fleet):
    _, url, _ = fleet
    with pytest.raises(Exception, match="engine builds are turned off with --front-ends above 1"):
        _client(url).predict("fp32", api_name="/build_engine")


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
    assert _segment(_client(url), images[2]).shape == SIZES[2]


def test_sigterm_stops_the_supervisor_and_every_front_end(fleet):
    proc, _, log = fleet
    pids = [int(p) for p in re.findall(r"front end \d started: pid (\d+)", log.read_text())]
    assert len(pids) >= 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], log.read_text()[-3000:]
    assert "stopping the proxy and 2 front ends" in log.read_text()

