"""The app's Engine tab: the facts behind the session (model, device, versions, caches), whether engine builds are
offered here, and the backend ladder."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from .. import backends
from ..gpu import detect, package_versions
from ..pipeline import peak_rss_mb
from .demo import RUNTIME_DISTS, Demo

TENSORRT_FLAVOURS = ("tensorrt", "tensorrt-rtx")  # the backends an engine build makes plans for
NO_BUILDS = ("Engine builds need an NVIDIA GPU that TensorRT or TensorRT-RTX can run on, and neither can run on this "
             "machine.")


@dataclass(frozen=True)
class EngineView:
    """What the Engine tab shows: the session's facts, the ladder's rows, and whether it offers builds."""

    markdown: str
    rows: list[list[str]]
    buildable: bool  # a TensorRT flavour can run here: the tab shows the build controls


def engine_view(demo: Demo) -> EngineView:
    """The Engine tab's contents, the ladder probed once."""
    rungs = backends.ladder()
    buildable = any(rung.available for rung in rungs if rung.name in TENSORRT_FLAVOURS)
    return EngineView(engine_markdown(demo, buildable), engine_rows(demo, rungs), buildable)


def engine_rows(demo: Demo, rungs: list[backends.Rung]) -> list[list[str]]:
    """Backend ladder: every backend, whether it can run here, and why not."""
    rows = []
    chosen = demo.session.backend.name if demo.session else None
    for rung in rungs:
        state = "▶ in use" if rung.name == chosen else ("available" if rung.available else "skipped")
        rows.append([rung.name, state, rung.reason])
    return rows


def engine_markdown(demo: Demo, buildable: bool) -> str:
    """The session's facts, then whether this app allows engine builds — or, where no TensorRT flavour can run
    (not `buildable`), the one sentence that takes the build controls' place."""
    facts = _facts(demo)
    if not buildable:
        return f"{facts}\n\n{NO_BUILDS}"
    return f"{facts}  \n**Engine builds from this page:** {_builds(demo)}" if demo.session else facts


def _facts(demo: Demo) -> str:
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
        "**Fused graph:** " + (f"`{session.onnx_file}` ({session.onnx_file.stat().st_size / 1e6:.1f} MB)"
                               if session.onnx_file else "none (this backend builds from the model itself)"),
        f"**Init time:** {session.init_ms:.0f} ms · **peak RSS:** {peak_rss_mb():.0f} MB",
    ]
    if served_by := demo.served_by():
        lines.insert(2, f"**Served by:** {served_by}")
    for key, value in backend.facts().items():
        lines.append(f"**{key}:** {value}")
    return "  \n".join(lines)


def _builds(demo: Demo) -> str:
    """Whether this app lets its visitors build engines, and why not."""
    config = demo.config
    if config.front_end_index is not None:
        return (f"turned off: this is front end {config.front_end_index} of several (`--front-ends`), and a build "
                f"would swap only its engine — build with `python -m segdemo build` and restart the app")
    if demo.builds_refused:
        return "turned off on this public app — its operator can allow them with `--allow-build`"
    return "allowed (public app started with `--allow-build`)" if demo.is_public else "allowed (loopback only)"
