"""`segdemo bench --cold-start N`: what a restart costs — N fresh processes in a row on one build folder, each timed
from its spawn to a ready session and to its first result, with the session's load spans.

The first start of an empty build folder exports, compiles and saves; later ones start from those artifacts. Pass
`--code DIR` to time another checkout of segdemo (e.g. the previous release) the same way, for before/after ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD = """
import json, os, sys, time
spawned = float(sys.argv[6])
from segdemo.pipeline import Session
session = Session(sys.argv[1], sys.argv[2], sys.argv[3], build_dir=sys.argv[4])
ready = time.time()
result = session.segment(sys.argv[5])
done = time.time()
# the background warm-up and compilations (torch-cuda's network), timed from the spawn; older code: none
settled = getattr(session, 'settle', lambda timeout: True)(900)
settled_s = round(time.time() - spawned, 3) if settled else None
spans = {}
for s in session.load_spans.spans:
    spans[s.name] = round(spans.get(s.name, 0.0) + s.duration_ms, 1)
heavy = [m for m in ("torch", "transformers", "onnx") if m in sys.modules]
print("COLD-START " + json.dumps({"ready_s": round(ready - spawned, 3), "first_result_s": round(done - spawned, 3),
      "init_ms": round(session.init_ms, 1), "request_ms": round(result.info["infer_ms"], 1), "spans_ms": spans,
      "warm_up": getattr(session, "warm_up", "now"), "backend": session.backend.name,
      "precision": session.backend.precision, "imported": heavy, "settled_s": settled_s}), flush=True)
os._exit(0)  # measured; skip tearing down CUDA and the compiler's worker threads
"""


def cold_starts(model: str, backend: str, precision: str, build_dir: Path, image: Path, starts: int,
                code: Path | None = None, timeout: float = 900) -> list[dict[str, Any]]:
    """Time `starts` fresh processes one after another on `build_dir`; each returns its measurements."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    runs = []
    for index in range(starts):
        spawned = time.time()
        done = subprocess.run([sys.executable, "-c", CHILD, model, backend, precision, str(build_dir), str(image),
                               repr(spawned)], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(code) if code is not None else None)
        if done.returncode != 0:
            lines = [x for x in done.stderr.splitlines() if "Warning" not in x and "warn(" not in x]
            raise RuntimeError(f"start {index + 1} failed:\n" + "\n".join(lines[-25:]))
        line = [x for x in done.stdout.splitlines() if x.startswith("COLD-START ")][-1]
        runs.append({"start": index + 1, **json.loads(line.removeprefix("COLD-START "))})
    return runs


def table(runs: list[dict[str, Any]], label: str = "") -> str:
    """Markdown: one row per start."""
    rows = [f"| {label} start | ready (s) | first result (s) | settled (s) | init (ms) | request (ms) | "
            "biggest load spans |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        spans = sorted(((v, k) for k, v in run["spans_ms"].items() if k != "session load"), reverse=True)[:4]
        top = ", ".join(f"{k} {v:.0f}" for v, k in spans)
        settled = f"{run['settled_s']:.2f}" if run.get("settled_s") else "—"
        rows.append(f"| {run['start']} | {run['ready_s']:.2f} | {run['first_result_s']:.2f} | {settled} | "
                    f"{run['init_ms']:.0f} | {run['request_ms']:.0f} | {top} |")
    return "\n".join(rows)
