"""What the `--front-ends` proxy costs per request (diagnosis for issue 14): a do-nothing Gradio app (the floor)
reached directly and through segdemo's FrontDoor, in alternating rounds of gradio_client clients in their own
processes; reports requests/s, p50 and, for the proxy (on asyncio's own event loop and on uvloop's), its event
loop's CPU time and connections per request."""

import argparse
import asyncio
import importlib.util
import multiprocessing
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from segdemo.bench.app import READY_S
from segdemo.bench.load import make_set
from segdemo.frontdoor import FrontDoor, Upstream
from segdemo.frontends import free_port

p = argparse.ArgumentParser()
p.add_argument("--clients", type=int, default=4)
p.add_argument("--processes", type=int, default=2)
p.add_argument("--requests", type=int, default=15, help="per client and round")
p.add_argument("--rounds", type=int, default=2)
args = p.parse_args()


class CountingDoor(FrontDoor):
    connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        CountingDoor.connections += 1
        await super().handle(reader, writer)


def clients(url: str, image: str, count: int, requests: int, out: multiprocessing.Queue) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    made = [Client(url, verbose=False, analytics_enabled=False) for _ in range(count)]
    for client in made:  # warm-up, outside the timed part
        client.predict(handle_file(image), api_name="/segment")

    def run(client) -> list[float]:
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.predict(handle_file(image), api_name="/segment")
            times.append((time.perf_counter() - start) * 1e3)
        return times

    out.put("ready")
    with ThreadPoolExecutor(count) as pool:
        out.put([t for times in pool.map(run, made) for t in times])


def round_(url: str, image: str, door_cpu=None) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    share = args.clients // args.processes
    procs = [context.Process(target=clients, args=(url, image, share, args.requests, out))
             for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        assert out.get(timeout=READY_S) == "ready"
    cpu0, conn0, start = door_cpu() if door_cpu else 0.0, CountingDoor.connections, time.perf_counter()
    latencies = [t for _ in procs for t in out.get(timeout=READY_S)]
    wall = time.perf_counter() - start
    cpu = (door_cpu() - cpu0) if door_cpu else 0.0
    for proc in procs:
        proc.join()
    n = len(latencies)
    # Clients start together but finish apart; the proxy's CPU and connections count every request it carried
    # between the two readings (the warm-ups are before them).
    return {"per_s": n / wall, "p50": statistics.median(latencies), "cpu_ms": cpu * 1e3 / n,
            "connections": (CountingDoor.connections - conn0) / n}


def door_on(loop: asyncio.AbstractEventLoop, port: int, upstream: int) -> tuple[int, object]:
    """A FrontDoor to `upstream` on `port`, served by `loop` in a thread; (port, a reader of that thread's CPU s)."""
    threading.Thread(target=loop.run_forever, daemon=True).start()
    door = CountingDoor([Upstream(0, upstream, live=True)])
    asyncio.run_coroutine_threadsafe(door.start("127.0.0.1", port), loop).result()

    async def thread_cpu() -> float:
        return time.thread_time()

    return port, lambda: asyncio.run_coroutine_threadsafe(thread_cpu(), loop).result()


def main() -> None:
    image = str(make_set(Path("/tmp/diag-proxy"))[0][0])
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, "-c", f"from segdemo.bench.app import serve_floor; "
                              f"serve_floor({floor_port}, 1, 64)"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    doors = {"asyncio": door_on(asyncio.new_event_loop(), free_port(), floor_port)}
    if importlib.util.find_spec("uvloop"):
        import uvloop

        doors["uvloop"] = door_on(uvloop.new_event_loop(), free_port(), floor_port)
    try:
        from gradio_client import Client

        deadline = time.time() + READY_S
        while True:
            try:
                Client(f"http://127.0.0.1:{floor_port}/", verbose=False, analytics_enabled=False)
                break
            except Exception:  # noqa: BLE001 — still starting
                if time.time() > deadline:
                    raise
                time.sleep(1)
        for r in range(args.rounds):
            direct = round_(f"http://127.0.0.1:{floor_port}/", image)
            print(f"round {r + 1}: direct {direct['per_s']:.1f}/s p50 {direct['p50']:.1f} ms", flush=True)
            for name, (port, door_cpu) in doors.items():
                proxied = round_(f"http://127.0.0.1:{port}/", image, door_cpu)
                print(f"  through the proxy on {name}: {proxied['per_s']:.1f}/s p50 {proxied['p50']:.1f} ms "
                      f"({proxied['per_s'] / direct['per_s']:.2f}× direct), proxy CPU {proxied['cpu_ms']:.2f} ms and "
                      f"{proxied['connections']:.1f} connections a request", flush=True)
    finally:
        floor.terminate()
        floor.wait(timeout=20)


if __name__ == "__main__":
    main()
