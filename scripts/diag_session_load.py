"""Where a batched session's time goes under load (device diagnosis for issue 14): N client threads against one
Session, once per GIL switch interval asked for, each followed by the mean of every span per request and the batches
(from the session's own history)."""

import argparse
import collections
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segdemo.bench.load import make_set
from segdemo.pipeline import Session

p = argparse.ArgumentParser()
p.add_argument("--model", default="random:b4")
p.add_argument("--backend", default="torch-cuda")
p.add_argument("--precision", default="fp16")
p.add_argument("--clients", type=int, default=32)
p.add_argument("--requests", type=int, default=20)
p.add_argument("--max-batch", type=int, default=16)
p.add_argument("--switch-ms", default="0.5,5", help="sys.setswitchinterval values to run with, in turn")
args = p.parse_args()


def load(session: Session, images: list[str], rounds: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def client(c: int) -> None:
        for k in range(rounds):
            start = time.perf_counter()
            session.segment(images[(c + k) % len(images)])
            latencies.append((time.perf_counter() - start) * 1e3)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    return time.perf_counter() - start, sorted(latencies)


def report(session: Session) -> None:
    per_request = collections.defaultdict(list)
    batches = {}
    for r in session.history.recent():
        for s in r.spans:
            per_request[s.name].append(s.duration_ms)
            if s.name == "batch":
                batches[s.attrs["batch"]] = (s.attrs["size"], s.start_ns, s.duration_ms)
    for name, values in sorted(per_request.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"  {name:28s} n={len(values):5d} mean {np.mean(values):8.2f} p50 {np.median(values):8.2f}")
    starts = sorted(batches.values(), key=lambda b: b[1])
    gaps = [(b2[1] - b1[1]) / 1e6 - b1[2] for b1, b2 in zip(starts, starts[1:], strict=False)]
    print(f"  batches {len(starts)}: size mean {np.mean([b[0] for b in starts]):.1f}, duration mean "
          f"{np.mean([b[2] for b in starts]):.1f} ms, gap between batches mean {np.mean(gaps):.2f} ms", flush=True)


images = [str(path) for path, _ in make_set(Path("/tmp/diag-images"))]
with Session(args.model, args.backend, args.precision, warm_up="now", max_batch=args.max_batch) as session:
    t = time.perf_counter()
    session.settle(timeout=900)
    print(f"settled in {time.perf_counter() - t:.1f} s; {session.backend.facts()['Network']}", flush=True)
    for switch in (float(v) for v in args.switch_ms.split(",")):
        sys.setswitchinterval(switch / 1e3)
        load(session, images, 2)
        wall, lat = load(session, images, args.requests)
        print(f"switch interval {switch} ms: {len(lat) / wall:.1f} img/s, p50 {lat[len(lat) // 2]:.1f} "
              f"p95 {lat[int(len(lat) * .95)]:.1f} p99 {lat[int(len(lat) * .99)]:.1f} ms", flush=True)
        report(session)
