"""The engine cache: a serialized plan per key, a JSON sidecar beside it, and checks that make it self-healing."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import atomic_write, digest, file_sha256

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"


def engine_key(parts: dict[str, Any]) -> str:
    """Hash of everything that makes a plan different (ONNX bytes, flavour+version, target, precision, profile…)."""
    return digest(json.dumps(parts, sort_keys=True))


def plan_path(build_dir: Path, onnx_file: Path, flavour: str, key: str) -> Path:
    """build/engines/<model>-<precision>-<flavour>-<key>.plan: readable name, content-addressed."""
    stem = onnx_file.stem.rsplit("-", 1)[0]  # drop the graph's own hash; the key covers it
    return build_dir / ENGINE_DIR / f"{stem}-{flavour}-{key[:16]}.plan"


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


@dataclass
class CachedEngine:
    """A plan on disk whose sidecar vouches for it."""

    plan: Path
    sidecar: dict[str, Any]


def lookup(plan: Path, key: str) -> tuple[CachedEngine | None, str]:
    """The cached engine if the sidecar matches `key` and the plan is intact, else (None, why not)."""
    meta_file = sidecar_path(plan)
    if not plan.is_file():
        return None, "no plan"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        return None, f"sidecar unreadable ({type(exc).__name__})"
    if meta.get("key") != key:
        return None, "sidecar key does not match"
    size = plan.stat().st_size
    if size != meta.get("plan", {}).get("bytes"):
        return None, f"plan is {size} bytes, sidecar says {meta.get('plan', {}).get('bytes')} (truncated?)"
    # Hashing costs well under a second even for B4; it catches corruption that keeps the size.
    if file_sha256(plan) != meta["plan"].get("sha256"):
        return None, "plan checksum does not match its sidecar (corrupt)"
    return CachedEngine(plan, meta), "cache hit"


def store(plan: Path, data: bytes, meta: dict[str, Any]) -> CachedEngine:
    """Write plan then sidecar atomically; the sidecar, written last, is what makes the plan valid."""
    meta = {**meta, "plan": {"file": plan.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    sidecar_path(plan).unlink(missing_ok=True)  # a crash between the two writes leaves a plan nobody trusts
    atomic_write(plan, data)
    write_sidecar(plan, meta)
    return CachedEngine(plan, meta)


def write_sidecar(plan: Path, meta: dict[str, Any]) -> None:
    atomic_write(sidecar_path(plan), (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode())


def invalidate(plan: Path, reason: str) -> None:
    """Drop a plan that failed to load, so the next lookup rebuilds it."""
    log.warning("discarding engine %s: %s", plan.name, reason)
    sidecar_path(plan).unlink(missing_ok=True)
    plan.unlink(missing_ok=True)
