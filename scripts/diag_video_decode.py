"""Decode throughput of a 1080p H.264 clip: FFmpeg in this process (the old path) against the decoder child's pipe
(the new one), alternating, same clip. `python3 scripts/diag_video_decode.py [seconds] [rounds]` from the repo root."""

import resource
import sys
import tempfile
import time
from pathlib import Path

from segdemo.bench.clips import make_clip
from segdemo.media.video_decode import decode, read_info
from segdemo.media.video_io import CLI_LIMITS, frames, probe

seconds, rounds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0, int(sys.argv[2]) if len(sys.argv) > 2 else 3
with tempfile.TemporaryDirectory() as tmp:
    clip = make_clip(Path(tmp) / "clip.mp4", 1920, 1080, seconds, 30)
    info = read_info(clip, CLI_LIMITS)
    start = time.perf_counter()
    probe(clip, CLI_LIMITS)
    print(f"probe through a child: {time.perf_counter() - start:.3f} s (spawn, imports, open)")
    best = {"in-process": 0.0, "child": 0.0}
    steadiest = dict(best)
    for _ in range(rounds):
        for name, source in (("in-process", lambda: decode(clip, info, CLI_LIMITS)),
                             ("child", lambda: frames(clip, info, CLI_LIMITS))):
            start = time.perf_counter()
            stream = source()
            next(stream)
            first = time.perf_counter()
            count = 1 + sum(1 for _ in stream)
            end = time.perf_counter()
            fps, steady = count / (end - start), (count - 1) / (end - first)
            best[name] = max(best[name], fps)
            steadiest[name] = max(steadiest[name], steady)
            print(f"{name:10s} {count} frames at {fps:.1f} fps ({steady:.1f} after the first, "
                  f"{first - start:.3f} s to it)")
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"best: in-process {best['in-process']:.1f} fps, child {best['child']:.1f} fps, "
          f"ratio child/in-process {best['child'] / best['in-process']:.3f} (after the first frame "
          f"{steadiest['child'] / steadiest['in-process']:.3f}); child peak RSS {child_mb:.0f} MB")
