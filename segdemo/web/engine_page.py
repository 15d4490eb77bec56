"""The app's Engine tab: the backend ladder and the facts behind the session (model, device, versions, caches)."""

from __future__ import annotations

import os
import platform

from .. import backends
from ..gpu import detect, package_versions
from ..pipeline import peak_rss_mb
from .demo import RUNTIME_DISTS, Demo


def engine_rows(demo: Demo) -> list[list[str]]:
    """Backend ladder: every backend, whether it can run here, and why not."""
    rows = []
    chosen = demo.session.backend.name if demo.session else None
    for rung in backends.ladder():
        state = "▶ in use" if rung.name == chosen else ("available" if rung.available else "skipped")
        rows.append([rung.name, state, rung.reason])
    return rows


def engine_markdown(demo: Demo) -> str:
    """Model, device, runtime versions, precision and the artifact cache entry behind the session."""
    if not demo.ready:
        return f"⏳ {demo.stage}…"
    if demo.session is None:
        return f"❌ {demo.error}"
    session = demo.session
    backend = session.backend
    gpu = detect()
    versions = ", ".join(f"{k} {v}" for k, v in package_versions(RUNTIME_DISTS).items())
    lines = [
        f"**Model:** `{session.source.spec}`" + (" — ⚠️ random weights" if session.random_weights else ""),
        f"**Backend:** `{backend.name}` on **{backend.device}**, precision **{backend.precision}**",
        f"**Machine:** {platform.machine()}, {os.cpu_count()} CPU cores, {gpu.describe() if gpu else 'no CUDA GPU'}",
        f"**Runtime versions:** {versions}",
        f"**Fused graph:** `{session.onnx_file}` ({session.onnx_file.stat().st_size / 1e6:.1f} MB)",
        f"**Init time:** {session.init_ms:.0f} ms · **peak RSS:** {peak_rss_mb():.0f} MB",
    ]
    for key, value in backend.facts().items():
        lines.append(f"**{key}:** {value}")
    config = demo.config
    if config.front_end_index is not None:
        builds = (f"turned off: this is front end {config.front_end_index} of several (`--front-ends`), and a build "
                  f"would swap only its engine — build with `python -m segdemo build` and restart the app")
    elif demo.builds_refused:
        builds = "turned off on this public app — its operator can allow them with `--allow-build`"
    else:
        builds = "allowed (public app started with `--allow-build`)" if demo.is_public else "allowed (loopback only)"
    lines.append(f"**Engine builds from this page:** {builds}")
    return "  \n".join(lines)
