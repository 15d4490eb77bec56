"""Where a CPU host's serving time goes (diagnosis for issue 14): the CPU per request of a Gradio server — the floor
(a do-nothing app) or the real app, in some modes — and of the `--front-ends` proxy (HAProxy, with the configuration
the supervisor generates) in front of the floor, in alternating rounds of gradio_client clients in their own processes.
Server modes: "default"; "nospin" (SEGDEMO_ORT_SPIN=0); "plain" (uvicorn on asyncio + h11 even where
uvloop and httptools are installed, which it would pick: install them to compare)."""

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from segdemo.bench.app import READY_S
from segdemo.bench.load import make_set
from segdemo.serving.frontends import free_port
from segdemo.serving.haproxy import ProxyConfig, executable, render

PREFIX = {"default": "", "nospin": "", "plain": "import sys; sys.modules['uvloop'] = None; "
          "sys.modules['httptools'] = None; "}  # uvicorn falls back to asyncio and h11
ENV = {"nospin": {"SEGDEMO_ORT_SPIN": "0"}}
SERVE = {
    "floor": "from segdemo.bench.app import serve_floor; serve_floor({port}, 1, 64)",
    "app": "import runpy, sys; sys.argv = ['app.py', '--model', {model!r}, '--backend', 'onnxruntime', '--port', "
           "'{port}']; runpy.run_path('app.py', run_name='__main__')",
}


def process_cpu(pid: int) -> Callable[[], float]:
    """A reader of a process's user + system CPU seconds so far (all its threads)."""
    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return read


def haproxy_on(upstream: int) -> tuple[str, subprocess.Popen]:
    """haproxy, configured as the supervisor configures it, in front of 127.0.0.1:`upstream`: (its URL, process)."""
    port = free_port()
    cfg = Path(tempfile.mkdtemp(prefix="diag-haproxy-")) / "haproxy.cfg"
    cfg.write_text(render(ProxyConfig("127.0.0.1", port, (upstream,))))
    proc = subprocess.Popen([executable(), "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}/", proc


def clients(url: str, extra: tuple, image: str, count: int, requests: int, out: multiprocessing.Queue) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

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


def one_round(args: argparse.Namespace, url: str, extra: tuple, image: str, cpu: Callable[[], float]) -> dict:
    """One round of args.clients clients: requests/s, p50, and the CPU `cpu` reads and proxied connections, per
    request, over the timed part (the clients' warm-ups come before it)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    share = args.clients // args.processes
    procs = [context.Process(target=clients, args=(url, extra, image, share, args.requests, out))
             for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert out.get(timeout=READY_S) == "ready"
    cpu0, start = cpu(), time.perf_counter()
    latencies = [t for _ in procs for t in out.get(timeout=READY_S)]
    wall, used = time.perf_counter() - start, cpu() - cpu0
    for proc in procs:
        proc.join()
    n = len(latencies)
    return {"per_s": n / wall, "p50": statistics.median(latencies), "cpu_ms": used * 1e3 / n}


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
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--requests", type=int, default=15, help="per client and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--targets", default="floor,app,proxy", help="floor, app (in each mode) and proxy (the floor "
                   "behind the front door, on asyncio and on uvloop where installed)")
    p.add_argument("--modes", default="default,nospin")
    args = p.parse_args()
    image = str(make_set(Path("/tmp/diag-serving"))[0][0])
    targets, modes = args.targets.split(","), args.modes.split(",")
    wanted = [("floor", mode) for mode in (modes if "floor" in targets else ["default"] if "proxy" in targets else [])]
    wanted += [("app", mode) for mode in modes] if "app" in targets else []
    servers, rows = [], {}  # rows: label → (URL, the answer's extra arguments, a reader of the CPU it costs)
    for target, mode in wanted:
        port = free_port()
        code = PREFIX[mode] + SERVE[target].format(port=port, model=args.model)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **ENV.get(mode, {})})
        servers.append((target, port, proc))
        rows[f"{target} {mode}"] = (f"http://127.0.0.1:{port}/", (0.5, False) if target == "app" else (),
                                    process_cpu(proc.pid))
    try:
        for url, _, _ in rows.values():
            wait_ready(url)
        if "proxy" in targets:
            floor_port = next(port for target, port, _ in servers if target == "floor")
            url, proc = haproxy_on(floor_port)
            servers.append(("proxy", 0, proc))
            wait_ready(url)
            rows["proxy haproxy"] = (url, (), process_cpu(proc.pid))
            if "floor" not in targets:  # started only to stand behind the proxy
                rows = {label: row for label, row in rows.items() if not label.startswith("floor")}
        time.sleep(5)  # the app's background warm-up
        for r in range(args.rounds):
            for label, (url, extra, cpu) in rows.items():
                got = one_round(args, url, extra, image, cpu)
                print(f"round {r + 1} {label:17s}: {got['per_s']:.1f}/s p50 {got['p50']:.1f} ms, CPU "
                      f"{got['cpu_ms']:.1f} ms a request", flush=True)
    finally:
        for _, _, proc in servers:
            proc.terminate()
        for _, _, proc in servers:
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
