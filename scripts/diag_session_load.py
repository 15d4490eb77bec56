"""Where a batched session's time goes under load (device diagnosis for issue 14): N client threads against a
Session, then the mean of every span per request and per batch, from the session's own history."""

import argparse
import collections
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
args = p.parse_args()

images = [str(path) for path, _ in make_set(Path("/tmp/diag-images"))]
with Session(args.model, args.backend, args.precision, warm_up="now", max_batch=args.max_batch) as session:
    t = time.perf_counter()
    session.settle(timeout=900)
    print(f"settled in {time.perf_counter() - t:.1f} s", flush=True)
    for rounds in (2, args.requests):
        lat = []

        def client(c: int, rounds: int = rounds, lat: list = lat) -> None:
            for k in range(rounds):
                s = time.perf_counter()
                session.segment(images[(c + k) % len(images)])
                lat.append((time.perf_counter() - s) * 1e3)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - start
    lat.sort()
    print(f"{len(lat) / wall:.1f} img/s, p50 {lat[len(lat) // 2]:.1f} p95 {lat[int(len(lat) * .95)]:.1f} ms",
          flush=True)
    recent = session.history.recent()[-args.clients * args.requests:]
    per_request = collections.defaultdict(list)
    batches = {}
    for r in recent:
        for s in r.spans:
            per_request[s.name].append(s.duration_ms)
            if s.name == "batch":
                batches[s.attrs["batch"]] = (s.attrs["size"], s.start_ns, s.duration_ms)
    print("span means per request (ms):")
    for name, values in sorted(per_request.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"  {name:28s} n={len(values):5d} mean {np.mean(values):8.2f} p50 {np.median(values):8.2f}")
    starts = sorted(batches.values(), key=lambda b: b[1])
    sizes = [b[0] for b in starts]
    durs = [b[2] for b in starts]
    gaps = [(b2[1] - b1[1]) / 1e6 - b1[2] for b1, b2 in zip(starts, starts[1:], strict=False)]
    print(f"batches {len(starts)}: size mean {np.mean(sizes):.1f}, duration mean {np.mean(durs):.1f} ms, "
          f"gap between batches mean {np.mean(gaps):.2f} ms p50 {np.median(gaps):.2f}")
