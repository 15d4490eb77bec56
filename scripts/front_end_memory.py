"""Memory of every process of `python app.py --front-ends N`, after each front end has answered a request.

    python scripts/front_end_memory.py --model random:b4 --front-ends 2 --build-dir build [--code DIR]

Starts the app (from `--code`, e.g. an older checkout, default this one) with `--backend onnxruntime --precision fp32`
on a free loopback port, waits until HAProxy sees every front end up, sends one 512×512 photo through new
gradio_client visitors until every front end has served one, then prints RSS and PSS (MB, /proc/PID/smaps_rollup) of
the supervisor, each front end, HAProxy and the engine tier's processes as JSON, and stops the app.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def memory(pid: int | str) -> dict[str, float]:
    """RSS and PSS of one process, MB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, *value = line.split()
        if key in ("Rss:", "Pss:"):
            out[key[:-1].lower() + "_mb"] = round(int(value[0]) / 1024, 1)
    return out


def processes(pid: int, text: str, front_ends: int) -> dict[str, dict[str, float]]:
    """The app's processes by role, from the supervisor's log."""
    rows = {"supervisor": memory(pid)}
    for k in range(front_ends):
        rows[f"front end {k}"] = memory(re.findall(rf"front end {k} started: pid (\d+)", text)[-1])
    rows["haproxy"] = memory(re.findall(r"haproxy started: pid (\d+)", text)[-1])
    for engine in re.findall(r"engine tier started: pid (\d+)", text)[-1:]:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if os.getpgid(int(proc.name)) == int(engine):
                    rows["tritonserver" if proc.name == engine else f"triton stub {proc.name}"] = memory(proc.name)
            except (OSError, ValueError):
                continue
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--front-ends", type=int, default=2)
    p.add_argument("--build-dir", default="build")
    p.add_argument("--code", type=Path, default=HERE, help="the checkout whose app.py runs (default this one)")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import skimage.data
    from gradio_client import Client, handle_file
    from PIL import Image

    from segdemo.serving.frontends import free_port

    port, work = free_port(), Path(tempfile.mkdtemp(prefix="front-end-memory-"))
    log, image = work / "app.log", work / "photo.jpg"
    Image.fromarray(skimage.data.astronaut()).save(image, quality=90)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--front-ends", str(args.front_ends), "--model", args.model, "--backend",
             "onnxruntime", "--precision", "fp32", "--build-dir", str(Path(args.build_dir).resolve()), "--port",
             str(port)], cwd=args.code, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        started = time.monotonic()
        while not all(f"Server front_ends/fe{k} is UP" in log.read_text() for k in range(args.front_ends)):
            if proc.poll() is not None or time.monotonic() - started > 900:
                sys.exit(f"the app did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        served: set[str] = set()
        clients = []  # kept open, so their visitors stay while memory is read
        while len(served) < args.front_ends and len(clients) < 4 * args.front_ends:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict(handle_file(str(image)), 0.5, False, api_name="/segment")
            clients.append(client)
            served.add(client.cookies["segdemo_frontend"])
        time.sleep(1)
        rows = processes(proc.pid, log.read_text(), args.front_ends)
        total = {key: round(sum(row[key] for row in rows.values()), 1) for key in ("rss_mb", "pss_mb")}
        print(json.dumps({"code": str(args.code), "model": args.model, "front_ends": args.front_ends,
                          "served_by": sorted(served), "processes": rows, "total": total}, indent=1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
