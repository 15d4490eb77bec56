"""Diagnose why the exported program fails to load in a restarted torch-cuda session (prints the load span's error)."""
import logging
import os
import sys
import time

logging.basicConfig(level=logging.WARNING)
from segdemo.pipeline import Session  # noqa: E402

s = Session("random:b4", "torch-cuda", "fp16", build=sys.argv[1])
if sys.argv[2] == "request":
    from segdemo.bench.images import PHOTOS, photo
    s.segment(photo(PHOTOS[0]))
deadline = time.time() + 120
while time.time() < deadline:
    found = [x for x in s.load_spans.spans if x.name in ("load exported network", "torch.export")]
    if found:
        print("SPANS", [(x.name, x.attrs, round(x.duration_ms)) for x in found], flush=True)
        break
    time.sleep(0.2)
os._exit(0)
