"""A Gradio process's CPU per request (diagnosis for issue 14): the floor (a do-nothing app) and the real app, each in
some modes, in alternating rounds of gradio_client clients in their own processes. Modes: "default"; "nospin"
(SEGDEMO_ORT_SPIN=0); "plain" (uvicorn on asyncio + h11 even where uvloop and httptools are installed, which it
would pick: install them to compare)."""

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from segdemo.bench.app import READY_S
from segdemo.bench.load import make_set
from segdemo.frontends import free_port

p = argparse.ArgumentParser()
p.add_argument("--clients", type=int, default=4)
p.add_argument("--processes", type=int, default=2)
p.add_argument("--requests", type=int, default=15, help="per client and round")
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--model", default="random:tiny")
p.add_argument("--targets", default="floor,app")
p.add_argument("--modes", default="default,nospin")
args = p.parse_args()

PREFIX = {"default": "", "nospin": "", "plain": "import sys; sys.modules['uvloop'] = None; "
          "sys.modules['httptools'] = None; "}  # uvicorn falls back to asyncio and h11
ENV = {"nospin": {"SEGDEMO_ORT_SPIN": "0"}}
SERVE = {
    "floor": "from segdemo.bench.app import serve_floor; serve_floor({port}, 1, 64)",
    "app": "import runpy, sys; sys.argv = ['app.py', '--model', {model!r}, '--backend', 'onnxruntime', '--port', "
           "'{port}']; runpy.run_path('app.py', run_name='__main__')",
}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients(url: str, target: str, image: str, count: int, requests: int, out: multiprocessing.Queue) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    extra = () if target == "floor" else (0.5, False)
    made = [Client(url, verbose=False, analytics_enabled=False) for _ in range(count)]
    for client in made:  # warm-up, outside the timed part
        client.predict(handle_file(image), *extra, api_name="/segment")

    def run(client) -> list[float]:
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.predict(handle_file(image), *extra, api_name="/segment")
            times.append((time.perf_counter() - start) * 1e3)
        return times

    out.put("ready")
    with ThreadPoolExecutor(count) as pool:
        out.put([t for times in pool.map(run, made) for t in times])


def one_round(url: str, target: str, image: str, pid: int) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    share = args.clients // args.processes
    procs = [context.Process(target=clients, args=(url, target, image, share, args.requests, out))
             for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert out.get(timeout=READY_S) == "ready"
    cpu0, start = cpu_s(pid), time.perf_counter()
    latencies = [t for _ in procs for t in out.get(timeout=READY_S)]
    wall, cpu = time.perf_counter() - start, cpu_s(pid) - cpu0
    for proc in procs:
        proc.join()
    n = len(latencies)
    return {"per_s": n / wall, "p50": statistics.median(latencies), "cpu_ms": cpu * 1e3 / n}


def wait_ready(url: str) -> None:
    from gradio_client import Client

    deadline = time.time() + READY_S
    while True:
        try:
            Client(url, verbose=False, analytics_enabled=False)
            return
        except Exception:  # noqa: BLE001 — still starting
            if time.time() > deadline:
                raise
            time.sleep(1)


def main() -> None:
    image = str(make_set(Path("/tmp/diag-server-cpu"))[0][0])
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    servers = {}
    for target in args.targets.split(","):
        for mode in args.modes.split(","):
            port = free_port()
            code = PREFIX[mode] + SERVE[target].format(port=port, model=args.model)
            proc = subprocess.Popen([sys.executable, "-c", code], env={**env, **ENV.get(mode, {})},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            servers[(target, mode)] = (f"http://127.0.0.1:{port}/", proc)
    try:
        for url, _ in servers.values():
            wait_ready(url)
        time.sleep(5)  # the app's background warm-up
        for r in range(args.rounds):
            for (target, mode), (url, proc) in servers.items():
                got = one_round(url, target, image, proc.pid)
                print(f"round {r + 1} {target:5s} {mode:8s}: {got['per_s']:.1f}/s p50 {got['p50']:.1f} ms, "
                      f"server CPU {got['cpu_ms']:.1f} ms a request", flush=True)
    finally:
        for _, proc in servers.values():
            proc.terminate()
        for _, proc in servers.values():
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
